"""nnk_solve_cosine against independent oracles, on both of its engines.

Every test runs twice: with the compiled per-query kernel (``nnkcli.numerics.compiled``,
numba) and with the batched numpy path (float32 candidates, float64 polish and
certificate), selected through ``NNKCLI_COMPILED``.

The oracle is scipy.optimize.nnls on the feature-space least-squares form of the
cosine-kernel problem (A = [1; X^T] / sqrt(2), b = [1; q] / sqrt(2)): no Gram matrix,
nothing shared with the code under test. Certificates are recomputed from a float64
Gram matrix built by a plain loop (both in ``tests/helpers/nnk_oracles.py``).
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnk_data
import nnk_oracles as oracles  # tests/helpers (pytest's pythonpath)
from nnk_data import unit
from nnkcli.errors import InputError
from nnkcli.numerics import compiled, cosine
from nnkcli.numerics.cosine import cosine_products, nnk_solve_cosine

blocks64, kkt, nnls_weights = oracles.blocks64, oracles.kkt, oracles.nnls_weights

TOL = 1e-8
# what the pipeline passes: float32 vectors from the index
problem = partial(nnk_data.nnk_problem, dtype=np.float32)
FAST = settings(max_examples=40, deadline=None)


@pytest.fixture(autouse=True, scope="module", params=["compiled", "numpy"])
def engine(request):
    """Run the module's tests on each engine (module scope: hypothesis keeps it per example)."""
    old = os.environ.get("NNKCLI_COMPILED")
    os.environ["NNKCLI_COMPILED"] = "1" if request.param == "compiled" else "0"
    if request.param == "compiled" and not compiled.available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    yield request.param
    if old is None:
        os.environ.pop("NNKCLI_COMPILED", None)
    else:
        os.environ["NNKCLI_COMPILED"] = old


def objective(G, g, theta):
    return 0.5 * np.einsum("bi,bij,bj->b", theta, G, theta) - np.einsum("bi,bi->b", g, theta)


def check(q, X, ks):
    G, g = blocks64(q, X)
    path = nnk_solve_cosine(X, g, ks, tol=TOL)
    assert [r.theta.shape[1] for r in path] == list(ks)
    for k, res in zip(ks, path):
        Gk, gk = G[:, :k, :k], g[:, :k]
        assert res.theta.dtype == np.float64 and (res.theta >= 0).all()
        assert (kkt(Gk, gk, res.theta) <= TOL).all()
        assert res.certified.all()
        np.testing.assert_allclose(res.kkt_residual, kkt(Gk, gk, res.theta), rtol=0, atol=1e-12)
        ours, theirs = objective(Gk, gk, res.theta), objective(Gk, gk, nnls_weights(q, X[:, :k]))
        assert (ours <= theirs + 1e-9 * np.abs(theirs)).all()
        np.testing.assert_allclose(res.objective, ours, rtol=1e-9, atol=1e-12)
    return G, g, path


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 30),
    d=st.integers(2, 40),
    kind=st.sampled_from(["random", "clustered", "collinear", "duplicates"]),
)
def test_one_k_matches_scipy_nnls_and_is_certified_in_float64(seed, k, d, kind):
    q, X = problem(seed, 5, k, d, kind)
    check(q, X, [k])


@FAST
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 6), extra=st.integers(2, 30))
def test_rank_deficient_k_greater_than_d_plus_one(seed, d, extra):
    q, X = problem(seed, 4, d + 1 + extra, d, "random")
    check(q, X, [d + 1 + extra])


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    d=st.integers(3, 30),
    kind=st.sampled_from(["random", "clustered", "duplicates", "collinear"]),
)
def test_path_over_k_matches_the_oracle_at_every_k(seed, d, kind):
    q, X = problem(seed, 4, 40, d, kind)
    check(q, X, [1, 5, 12, 40])


def test_image_like_features_match_nnls_weights():
    q, X = problem(7, 100, 50, 30, "clustered")
    _, _, (res,) = check(q, X, [50])
    np.testing.assert_allclose(res.theta, nnls_weights(q, X), atol=1e-7)
    assert not res.fallback.any()


def test_batch_composition_and_order_do_not_change_a_single_bit():
    q, X = problem(3, 24, 30, 16, "clustered")
    _, g = blocks64(q, X)
    whole = nnk_solve_cosine(X, g, [10, 30])
    perm = np.random.default_rng(0).permutation(24)
    shuffled = nnk_solve_cosine(X[perm], g[perm], [10, 30])
    for a, b in zip(whole, shuffled):
        np.testing.assert_array_equal(a.theta[perm], b.theta)
        np.testing.assert_array_equal(a.kkt_residual[perm], b.kkt_residual)
    for i in (0, 5, 23):
        single = nnk_solve_cosine(X[i : i + 1], g[i : i + 1], [10, 30])
        for a, b in zip(whole, single):
            np.testing.assert_array_equal(a.theta[i : i + 1], b.theta)


def test_wrong_float32_supports_are_solved_again_in_float64(monkeypatch, engine):
    # neighbors 1e-4 apart: float32 kernel blocks (numpy) and float32 gradient estimates
    # (compiled) cannot separate them, float64 can; the weights must still be the oracle's
    q, X = problem(11, 6, 12, 8, "collinear")
    rng = np.random.default_rng(1)
    base = unit(rng.standard_normal((6, 1, 8)))
    X = unit(base + 1e-4 * rng.standard_normal((6, 12, 8))).astype(np.float32)
    q = unit(base[:, 0] + 1e-4 * rng.standard_normal((6, 8))).astype(np.float32)
    calls = []
    real = cosine.kernel_blocks
    monkeypatch.setattr(cosine, "kernel_blocks", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    check(q, X, [12])
    assert engine == "compiled" or calls, "expected at least one query to need the float64 re-solve"


def test_absent_neighbors_get_no_weight():
    q, X = problem(5, 3, 8, 6, "clustered")
    _, g = blocks64(q, X)
    X[1, 2:5] = 0.0  # not returned by an approximate index
    g[1, 2:5] = 0.0
    (res,) = nnk_solve_cosine(X, g, [8])
    assert (res.theta[1, 2:5] == 0).all() and res.certified.all()


def test_structured_product_equals_the_gram_product():
    q, X = problem(2, 4, 9, 5, "random")
    G, _ = blocks64(q, X)
    theta = np.random.default_rng(0).random((4, 9))
    np.testing.assert_allclose(cosine_products(X, theta), np.einsum("bij,bj->bi", G, theta), rtol=1e-12)


def test_empty_batch():
    res = nnk_solve_cosine(np.zeros((0, 5, 3), np.float32), np.zeros((0, 5)), [2, 5])
    assert [r.theta.shape for r in res] == [(0, 2), (0, 5)]


@pytest.mark.parametrize("ks", [[], [3, 3], [5, 2], [0, 4], [4, 9]])
def test_bad_k_values(ks):
    q, X = problem(0, 2, 8, 4, "random")
    with pytest.raises(InputError, match="k_values must increase"):
        nnk_solve_cosine(X, np.ones((2, 8)), ks)


@pytest.mark.parametrize("max_iter", [0, -3])
def test_max_iter_below_one_is_refused_on_either_engine(max_iter):
    q, X = problem(0, 2, 8, 4, "random")
    with pytest.raises(InputError, match=f"max_iter must be at least 1, got {max_iter}"):
        nnk_solve_cosine(X, np.ones((2, 8)), [8], max_iter=max_iter)


def test_bad_shapes():
    with pytest.raises(InputError, match="X must be"):
        nnk_solve_cosine(np.zeros((2, 8)), np.ones((2, 8)), [2])


def test_normalize_rows_by_blocks_equals_the_whole_array_norm_bit_for_bit():
    from nnkcli.numerics.kernels import NORMALIZE_BLOCK_ROWS, normalize_rows

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(2 * NORMALIZE_BLOCK_ROWS + 37, 19)) * rng.lognormal(size=(1, 19))).astype(np.float32)
    expected = x / np.linalg.norm(x, axis=1)[:, None]  # the oracle: one norm over the whole array
    out = normalize_rows(x)
    assert out is not x and np.array_equal(out, expected)
    mine = x.copy()
    assert normalize_rows(mine, copy=False) is mine and np.array_equal(mine, expected)
    frozen = x.copy()
    frozen.flags.writeable = False
    assert np.array_equal(normalize_rows(frozen, copy=False), expected)  # read-only: a copy, not an error
    halves = x.astype(np.float64)
    assert normalize_rows(halves, copy=False).dtype == np.float32 and halves.dtype == np.float64
