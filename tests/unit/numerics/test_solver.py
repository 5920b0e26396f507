"""nnk_solve / nnk_weights / kernel_blocks against independent oracles.

The oracle is scipy.optimize.nnls on the least-squares form built straight from the
features: for the cosine kernel, K(a, b) = (1 + <a, b>) / 2 is the inner product of
[1, a] / sqrt(2), so min_{theta >= 0} 1/2 theta^T G theta - g^T theta is
min |A theta - b|^2 / 2 with A = [1; X^T] / sqrt(2), b = [1; q] / sqrt(2) -- no Gram
matrix, no factorisation, nothing shared with the code under test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from nnk_data import nnk_problem as problem  # float64 q (B, d), X (B, k, d)
from nnk_data import unit
from nnkcli import NnkResult, kernel_blocks, nnk_solve, nnk_weights
from nnkcli.errors import InputError

TOL = 1e-8
FAST = settings(max_examples=50, deadline=None)


def oracle(query, neighbors):
    """theta (B, k) from scipy NNLS on the feature-space least-squares form."""
    B, k, _ = neighbors.shape
    out = np.zeros((B, k))
    for i in range(B):
        A = np.vstack([np.ones(k), neighbors[i].T]) / np.sqrt(2)
        b = np.concatenate([[1.0], query[i]]) / np.sqrt(2)
        out[i] = nnls(A, b, maxiter=100 * k)[0]
    return out


def objective(G, g, theta):
    return 0.5 * np.einsum("bi,bij,bj->b", theta, G, theta) - np.einsum("bi,bi->b", g, theta)


def kkt(G, g, theta):
    """Relative KKT violation, computed here from scratch."""
    lam = np.einsum("bij,bj->bi", G, theta) - g
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    scale = np.abs(g).max(axis=1)
    return viol.max(axis=1) / np.where(scale > 0, scale, 1.0)  # g = 0: absolute


def check_against_oracle(query, neighbors, res=None):
    G, g = kernel_blocks(query, neighbors)
    if res is None:
        res = nnk_solve(G, g, tol=TOL)
    ref = oracle(query, neighbors)
    assert res.theta.shape == g.shape and res.theta.dtype == np.float64
    assert (res.theta >= 0).all()
    assert (kkt(G, g, res.theta) <= TOL).all()
    np.testing.assert_allclose(res.kkt_residual, kkt(G, g, res.theta), rtol=0, atol=1e-12)
    ours, theirs = objective(G, g, res.theta), objective(G, g, ref)
    assert (ours <= theirs + 1e-9 * np.abs(theirs)).all(), np.max((ours - theirs) / np.abs(theirs))
    np.testing.assert_allclose(res.objective, ours, rtol=1e-9, atol=1e-12)
    return G, g, res, ref


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 40),
    d=st.integers(2, 48),
    kind=st.sampled_from(["random", "clustered", "collinear", "duplicates"]),
)
def test_matches_scipy_nnls(seed, k, d, kind):
    q, X = problem(seed, 6, k, d, kind)
    check_against_oracle(q, X)


@FAST
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 6), extra=st.integers(2, 60))
def test_rank_deficient_k_greater_than_d_plus_one(seed, d, extra):
    q, X = problem(seed, 5, d + 1 + extra, d, "random")
    G, g, res, _ = check_against_oracle(q, X)
    assert np.linalg.matrix_rank(G[0]) <= d + 1 < G.shape[1]
    assert not res.fallback.any()


@pytest.mark.parametrize("k", [1, 2, 3, 17, 64, 128, 256])
def test_sizes_up_to_256(k):
    q, X = problem(k, 3, k, 24, "clustered")
    check_against_oracle(q, X)


def test_real_image_like_features_are_certified_without_fallback():
    q, X = problem(7, 200, 50, 30, "clustered")
    _, _, res, ref = check_against_oracle(q, X)
    assert not res.fallback.any()
    np.testing.assert_allclose(res.theta, ref, atol=1e-7)
    assert (res.support_size >= 1).all()


def test_query_equal_to_a_training_point_puts_all_weight_on_it():
    q, X = problem(3, 8, 20, 16, "random")
    X[np.arange(8), np.arange(8) % 20] = q
    G, g = kernel_blocks(q, X)
    theta = nnk_solve(G, g).theta
    expected = np.zeros_like(theta)
    expected[np.arange(8), np.arange(8) % 20] = 1.0
    np.testing.assert_allclose(theta, expected, atol=1e-9)


def test_duplicated_neighbors_share_or_split_weight_but_objective_is_exact():
    q, X = problem(11, 20, 12, 8, "random")
    X[:, 5] = X[:, 2]
    X[:, 9] = X[:, 2]
    _, _, res, ref = check_against_oracle(q, X)
    # the duplicates' total weight is determined even though the split is not
    for theta in (res.theta, ref):
        assert np.all(np.isfinite(theta))
    np.testing.assert_allclose(res.theta[:, [2, 5, 9]].sum(1), ref[:, [2, 5, 9]].sum(1), atol=1e-7)


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 30))
def test_permuting_neighbors_permutes_theta(seed, k):
    q, X = problem(seed, 4, k, 40, "random")  # d > k: unique, well-conditioned minimiser
    perm = np.random.default_rng(seed).permutation(k)
    G, g = kernel_blocks(q, X)
    a = nnk_solve(G, g).theta
    b = nnk_solve(G[:, perm][:, :, perm], g[:, perm]).theta
    np.testing.assert_allclose(b, a[:, perm], atol=1e-10)


@FAST
@given(seed=st.integers(0, 2**32 - 1), c=st.floats(1e-3, 1e3))
def test_scale_invariances(seed, c):
    q, X = problem(seed, 4, 15, 30, "random")
    G, g = kernel_blocks(q, X)
    theta = nnk_solve(G, g).theta
    # scaling G and g together keeps theta; scaling g alone scales theta
    np.testing.assert_allclose(nnk_solve(c * G, c * g).theta, theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(nnk_solve(G, c * g).theta, c * theta, rtol=1e-8, atol=1e-10 * c)


def test_warm_start_from_smaller_k_equals_cold_start():
    q, X = problem(5, 40, 120, 200, "clustered")
    G_all, g_all = kernel_blocks(q, X)
    support = None
    for k in range(10, 121, 10):
        G, g = G_all[:, :k, :k], g_all[:, :k]  # leading-block views, as sweep passes them
        warm = None
        if support is not None:
            warm = np.zeros(g.shape, dtype=bool)
            warm[:, : support.shape[1]] = support
        cold = nnk_solve(G, g)
        hot = nnk_solve(G, g, warm_start=warm)
        np.testing.assert_allclose(hot.theta, cold.theta, atol=1e-10)
        assert (hot.kkt_residual <= TOL).all()
        if warm is not None:
            assert hot.iterations.sum() < cold.iterations.sum()
        support = hot.support


@FAST
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(3, 40), kind=st.sampled_from(["random", "clustered"]))
@example(seed=8546, d=3, kind="random")  # failed with the old atol=1e-10 on theta
@example(seed=129785707, d=3, kind="clustered")  # failed with the old rtol=1e-12 on the objective
def test_warm_start_equals_cold_start_property(seed, d, kind):
    q, X = problem(seed, 5, 60, d, kind)  # k > d + 1 for small d: rank-deficient G
    G_all, g_all = kernel_blocks(q, X)
    previous = nnk_solve(G_all[:, :30, :30], g_all[:, :30]).support
    warm = np.zeros((5, 60), dtype=bool)
    warm[:, :30] = previous
    hot = nnk_solve(G_all, g_all, warm_start=warm)
    cold = nnk_solve(G_all, g_all)
    assert (hot.kkt_residual <= TOL).all()
    # Both objectives lie above the optimum f* by at most what their certificates allow: for convex f and
    # theta >= 0 with w = g - G theta, f(theta) - f* <= -w.(theta - theta*) <= r (|theta|_1 + |theta*|_1),
    # r = kkt_residual * max|g|. So they agree to the larger gap (rtol 1e-12 failed at 1.5e-10, seed
    # 129785707, d = 3, clustered: a rank-deficient cone whose certificate allows more)
    gscale = np.abs(g_all).max(axis=1)
    norm1 = np.maximum(hot.theta.sum(axis=1), cold.theta.sum(axis=1))
    gap = np.maximum(hot.kkt_residual, cold.kkt_residual) * gscale * 2 * norm1 * 1.01
    assert (np.abs(hot.objective - cold.objective) <= gap + 1e-14 * np.abs(cold.objective)).all()
    if kind == "random":
        # Both solutions are certified to kkt_residual <= TOL (relative to max|g|), not to
        # machine precision, so on a shared support they may differ by up to the certified
        # gradient residuals over the support block's smallest eigenvalue (seed 8546, d=3:
        # cond(G_SS) = 1e4 gives 2.4e-8). Off a shared support, G theta is what is unique.
        for b in range(len(q)):
            s = cold.support[b]
            if (hot.support[b] == s).all():
                lam = np.linalg.eigvalsh(G_all[b][np.ix_(s, s)])[0]
                bound = 2 * TOL * np.abs(g_all[b]).max() * np.sqrt(s.sum()) / lam
                assert np.abs(hot.theta[b] - cold.theta[b]).max() <= max(bound, 1e-10)
            else:
                np.testing.assert_allclose(G_all[b] @ hot.theta[b], G_all[b] @ cold.theta[b], atol=1e-7)
    # else: the "clustered" cone of a few dimensions is so ill-conditioned that float64
    # pins theta down only to ~1e-7 (the NNLS oracle disagrees with both as much)


def test_gaussian_kernel_matches_cholesky_nnls():
    from scipy.linalg import cholesky, solve_triangular

    q, X = problem(21, 20, 25, 12, "clustered")
    G, g = kernel_blocks(q, X, kernel="gaussian")
    res = nnk_solve(G, g)
    assert (kkt(G, g, res.theta) <= TOL).all()
    for b in range(20):
        L = cholesky(G[b], lower=True)
        ref = nnls(L.T, solve_triangular(L, g[b], lower=True))[0]
        assert objective(G[b : b + 1], g[b : b + 1], res.theta[b : b + 1])[0] <= (
            objective(G[b : b + 1], g[b : b + 1], ref[None])[0] * (1 - 1e-9) + 1e-15
        )


def test_a_wrong_or_singular_warm_start_costs_nothing_but_time():
    q, X = problem(9, 10, 20, 8, "random")
    X[:, 4] = X[:, 3]  # the guess below holds duplicates: singular active set
    G, g = kernel_blocks(q, X)
    warm = np.ones(g.shape, dtype=bool)
    cold, hot = nnk_solve(G, g), nnk_solve(G, g, warm_start=warm)
    assert (hot.kkt_residual <= TOL).all()
    np.testing.assert_allclose(objective(G, g, hot.theta), objective(G, g, cold.theta), rtol=1e-9)


def test_float32_inputs_are_solved_in_float64():
    q, X = problem(2, 10, 30, 20, "clustered")
    G, g = kernel_blocks(q, X)
    G32, g32 = G.astype(np.float32), g.astype(np.float32)
    res = nnk_solve(G32, g32)
    assert res.theta.dtype == np.float64
    ref = nnk_solve(G32.astype(np.float64), g32.astype(np.float64))
    np.testing.assert_array_equal(res.theta, ref.theta)


def test_batch_composition_does_not_change_results():
    q, X = problem(4, 300, 40, 30, "clustered")
    G, g = kernel_blocks(q, X)
    whole = nnk_solve(G, g).theta
    np.testing.assert_array_equal(nnk_solve(G[17:18], g[17:18]).theta[0], whole[17])
    rev = nnk_solve(G[::-1], g[::-1]).theta[::-1]
    np.testing.assert_allclose(rev, whole, atol=1e-12)


def test_empty_batch_and_k_equal_one():
    res = nnk_solve(np.zeros((0, 5, 5)), np.zeros((0, 5)))
    assert res.theta.shape == (0, 5) and res.iterations.shape == (0,)
    res = nnk_solve(np.array([[[2.0]], [[1.0]]]), np.array([[1.0], [-1.0]]))
    np.testing.assert_allclose(res.theta, [[0.5], [0.0]])


def test_non_positive_g_gives_zero_weights():
    G = np.broadcast_to(np.eye(4), (2, 4, 4)).copy()
    res = nnk_solve(G, np.array([[0.0, 0, 0, 0], [-1.0, -2, 0, -3]]))
    assert (res.theta == 0).all() and (res.kkt_residual == 0).all()


def test_fallback_path_is_exact_and_flagged():
    q, X = problem(8, 6, 30, 4, "random")  # k > d + 1: singular G
    X[:, 7] = X[:, 1]
    G, g = kernel_blocks(q, X)
    res = nnk_solve(G, g, max_iter=1)  # forces every query onto the fallback
    assert res.fallback.all()
    check_against_oracle(q, X, res=res)


def test_uncertifiable_problem_warns():
    # G = 0 with g > 0 is unbounded: no finite theta satisfies the KKT conditions
    with pytest.warns(RuntimeWarning, match="could not be certified"):
        res = nnk_solve(np.zeros((1, 2, 2)), np.ones((1, 2)))
    assert not res.certified[0]


def test_nnk_result_helpers():
    q, X = problem(1, 5, 10, 12, "clustered")
    res = nnk_weights(q, X)
    assert isinstance(res, NnkResult)
    np.testing.assert_array_equal(res.support_size, (res.theta > 0).sum(1))
    both = NnkResult.concatenate([res, res])
    assert both.theta.shape == (10, 10) and both.certified.all()


@pytest.mark.parametrize(
    "G, g, match",
    [
        (np.zeros((2, 3, 3)), np.zeros((2, 4)), r"G must be \(B, k, k\)"),
        (np.zeros((2, 3)), np.zeros((2, 3)), r"G must be \(B, k, k\)"),
        (np.zeros((2, 0, 0)), np.zeros((2, 0)), "k must be at least 1"),
        (np.zeros((1, 2, 2)), np.array([[np.nan, 1.0]]), r"g holds NaN or infinite values \(query 0\)"),
        (np.zeros((1, 2, 2), dtype=complex), np.ones((1, 2)), "G must be a real float array"),
    ],
)
def test_bad_input_is_an_input_error(G, g, match):
    with pytest.raises(InputError, match=match):
        nnk_solve(G, g)


def test_nan_in_a_row_of_g_that_is_read_is_an_input_error():
    G = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    G[1, 0, 2] = G[1, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"G holds NaN or infinite values \(query 1\)"):
        nnk_solve(G, np.ones((2, 3)))


def test_bad_parameters():
    G, g = np.ones((1, 2, 2)), np.ones((1, 2))
    with pytest.raises(InputError, match="tol must be positive"):
        nnk_solve(G, g, tol=0)
    with pytest.raises(InputError, match="max_iter must be at least 1"):
        nnk_solve(G, g, max_iter=0)
    with pytest.raises(InputError, match="warm_start must have the shape of g"):
        nnk_solve(G, g, warm_start=np.ones((1, 3), dtype=bool))


def test_non_psd_g_reaching_the_fallback_is_an_input_error():
    G = np.array([[[1.0, 2.0], [2.0, 1.0]]])  # eigenvalues 3 and -1
    with pytest.raises(InputError, match="not positive semidefinite"):
        nnk_solve(G, np.array([[1.0, 1.0]]), max_iter=1)


# --------------------------------------------------------------------------- kernels


def test_cosine_kernel_blocks_match_a_naive_loop():
    q, X = problem(0, 3, 5, 7, "random")
    G, g = kernel_blocks(q.astype(np.float32), X.astype(np.float32))
    assert G.dtype == g.dtype == np.float64 and G.flags.writeable
    q32, X32 = q.astype(np.float32).astype(np.float64), X.astype(np.float32).astype(np.float64)
    for b in range(3):
        for i in range(5):
            assert g[b, i] == pytest.approx((1 + q32[b] @ X32[b, i]) / 2, abs=1e-15)
            for j in range(5):
                assert G[b, i, j] == pytest.approx((1 + X32[b, i] @ X32[b, j]) / 2, abs=1e-15)


def test_gaussian_kernel_blocks_match_a_naive_loop():
    q, X = problem(1, 3, 6, 5, "random")
    G, g = kernel_blocks(q, X, kernel="gaussian")
    for b in range(3):
        dist = np.linalg.norm(X[b] - q[b], axis=1)
        sigma = dist.max() / 3
        np.testing.assert_allclose(g[b], np.exp(-(dist**2) / (2 * sigma**2)), rtol=1e-12)
        D = np.linalg.norm(X[b][:, None] - X[b][None], axis=2)
        np.testing.assert_allclose(G[b], np.exp(-(D**2) / (2 * sigma**2)), rtol=1e-10, atol=1e-14)
    res = nnk_weights(q, X, kernel="gaussian")
    assert res.certified.all()


def test_gaussian_sigma_zero_is_guarded():
    q = unit(np.ones((1, 4)))
    X = np.repeat(q[:, None], 3, axis=1)  # every neighbor is the query: sigma = 0
    G, g = kernel_blocks(q, X, kernel="gaussian")
    assert np.isfinite(G).all() and np.isfinite(g).all()
    np.testing.assert_allclose(nnk_solve(G, g).theta.sum(), 1.0)


def test_kernel_blocks_uses_given_sims():
    q, X = problem(2, 2, 4, 6, "random")
    sims = np.einsum("bkd,bd->bk", X, q)
    G1, g1 = kernel_blocks(q, X)
    G2, g2 = kernel_blocks(q, X, sims=sims)
    np.testing.assert_allclose(g2, g1, atol=1e-15)
    np.testing.assert_array_equal(G2, G1)
    np.testing.assert_allclose(kernel_blocks(q, X, sims=sims * 0)[1], 0.5)


@pytest.mark.parametrize(
    "query, neighbors, kwargs, match",
    [
        (np.ones((2, 3)), np.ones((2, 4, 5)), {}, r"neighbors must be \(B, k, d\)"),
        (np.ones((2, 3)), np.ones((2, 4)), {}, "neighbors must have 3 dimensions"),
        (np.ones((2, 3)), np.ones((2, 4, 3)), {"kernel": "rbf"}, "unknown kernel 'rbf'"),
        (np.full((2, 3), np.nan), np.ones((2, 4, 3)), {}, "query holds NaN"),
        (np.ones((2, 3)), np.ones((2, 4, 3)), {"sims": np.ones((2, 5))}, r"sims must have shape \(2, 4\)"),
    ],
)
def test_kernel_blocks_bad_input(query, neighbors, kwargs, match):
    with pytest.raises(InputError, match=match):
        kernel_blocks(query, neighbors, **kwargs)


def test_nnk_weights_equals_blocks_plus_solve_and_chunks_do_not_matter():
    q, X = problem(6, 50, 25, 20, "clustered")
    G, g = kernel_blocks(q, X)
    ref = nnk_solve(G, g).theta
    np.testing.assert_array_equal(nnk_weights(q, X).theta, ref)
    np.testing.assert_array_equal(nnk_weights(q, X, chunk_size=7).theta, ref)
    assert nnk_weights(q[:0], X[:0]).theta.shape == (0, 25)
    with pytest.raises(InputError, match="chunk_size must be at least 1"):
        nnk_weights(q, X, chunk_size=0)


def test_no_warnings_on_ordinary_problems():
    q, X = problem(12, 50, 60, 10, "clustered")  # k > d + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnk_weights(q, X)


# ----------------------------------------------------------------------------- solving a k path (sweep)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1), d=st.integers(3, 40), kind=st.sampled_from(["random", "clustered", "duplicates"])
)
def test_path_equals_independent_solves(seed, d, kind):
    from nnkcli.numerics.solver import nnk_solve_path

    q, X = problem(seed, 6, 60, d, kind)
    G, g = kernel_blocks(q, X)
    ks = [1, 5, 10, 30, 60]
    path = nnk_solve_path(G, g, ks, tol=TOL)
    assert [r.theta.shape[1] for r in path] == ks
    for k, res in zip(ks, path):
        Gk, gk = G[:, :k, :k], g[:, :k]
        # its own certificate, checked from scratch, and the oracle's objective
        assert (kkt(Gk, gk, res.theta) <= TOL).all()
        np.testing.assert_allclose(res.kkt_residual, kkt(Gk, gk, res.theta), rtol=0, atol=1e-12)
        cold = nnk_solve(Gk, gk, tol=TOL)
        ours, theirs = objective(Gk, gk, res.theta), objective(Gk, gk, cold.theta)
        assert (np.abs(ours - theirs) <= 1e-9 * np.abs(theirs) + 1e-12).all()
        np.testing.assert_allclose(res.objective, ours, rtol=1e-9, atol=1e-12)


def test_path_reuses_the_previous_solution_when_new_neighbors_do_not_enter():
    from nnkcli.numerics.solver import nnk_solve_path

    rng = np.random.default_rng(3)
    q = unit(rng.standard_normal((1, 16)))
    near = unit(q[:, None, :] + 0.05 * rng.standard_normal((1, 4, 16)))
    far = unit(-q[:, None, :] + 0.3 * rng.standard_normal((1, 6, 16)))  # behind: never chosen
    X = np.concatenate([near, far], axis=1)
    G, g = kernel_blocks(q, X)
    first, second = nnk_solve_path(G, g, [4, 10])
    assert (second.theta[:, 4:] == 0).all() and second.iterations[0] == 0
    np.testing.assert_array_equal(second.theta[:, :4], first.theta)


def test_path_bad_k_values():
    from nnkcli.numerics.solver import nnk_solve_path

    G, g = kernel_blocks(*problem(0, 2, 8, 4, "random"))
    for ks in ([], [3, 3], [5, 2], [0, 4], [4, 9]):
        with pytest.raises(InputError, match="k_values must increase"):
            nnk_solve_path(G, g, ks)
