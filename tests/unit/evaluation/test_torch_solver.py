"""The device NNK solve (nnkcli.evaluation.torch_solver) on the CPU, against independent oracles.

The oracle is scipy.optimize.nnls on the feature-space least-squares form of the
cosine-kernel problem (A = [1; X^T] / sqrt(2), b = [1; q] / sqrt(2)): no Gram matrix and
nothing shared with the code under test. Certificates are recomputed here from a float64
Gram matrix built by a plain loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from nnk_data import nnk_problem

torch = pytest.importorskip("torch")

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.evaluation import torch_solver  # noqa: E402
from nnkcli.evaluation.torch_solver import nnk_solve_cosine_torch  # noqa: E402
from nnkcli.numerics.cosine import nnk_solve_cosine  # noqa: E402

TOL = 1e-8
FAST = settings(max_examples=30, deadline=None)


def problem(seed, B, k, d, kind, n_missing=0):
    """Queries q (B, d), neighbors X (B, k, d) float32 and g (B, k) float64 as the pipeline builds them."""
    q, X = nnk_problem(seed, B, k, d, kind, dtype=np.float32, collinear_exponents=(-5, -1))
    g = 0.5 * (1.0 + np.einsum("bkd,bd->bk", X.astype(np.float64), q.astype(np.float64)))
    if n_missing:  # the last neighbors absent: zero rows, g = 0 (what score_chunk passes)
        X[:, k - n_missing :] = 0.0
        g[:, k - n_missing :] = 0.0
    return q, X, g


def oracle(q, X, present):
    B, k, _ = X.shape
    out = np.zeros((B, k))
    for b in range(B):
        cols = np.flatnonzero(present[b])
        A = np.vstack([np.ones(cols.size), X[b, cols].astype(np.float64).T]) / np.sqrt(2)
        rhs = np.concatenate([[1.0], q[b].astype(np.float64)]) / np.sqrt(2)
        out[b, cols] = nnls(A, rhs, maxiter=100 * k)[0]
    return out


def certificate(X, g, theta):
    """max(|lambda| on the support, -lambda off it) / max|g| from a float64 loop-built G."""
    B, k, _ = X.shape
    Xd = X.astype(np.float64)
    out = np.empty(B)
    for b in range(B):
        G = np.array([[(1 + Xd[b, i] @ Xd[b, j]) / 2 for j in range(k)] for i in range(k)])
        lam = G @ theta[b] - g[b]
        viol = np.where(theta[b] > 0, np.abs(lam), np.maximum(-lam, 0.0))
        out[b] = viol.max() / max(np.abs(g[b]).max(), 1e-300)
    return out


def objective(X, g, theta):
    v = np.einsum("bk,bkd->bd", theta, X.astype(np.float64))
    return 0.25 * (theta.sum(1) ** 2 + (v * v).sum(1)) - (g * theta).sum(1)


def solve(X, g, k_values, **kw):
    return nnk_solve_cosine_torch(torch.from_numpy(X), torch.from_numpy(g), k_values, **kw)


@pytest.mark.slow
@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 12),
    k=st.integers(1, 30),
    d=st.integers(2, 40),
    kind=st.sampled_from(["random", "clustered", "collinear", "duplicates"]),
    n_missing=st.integers(0, 3),
)
def test_weights_match_nnls_and_carry_the_certificate(seed, B, k, d, kind, n_missing):
    n_missing = min(n_missing, k - 1)
    q, X, g = problem(seed, B, k, d, kind, n_missing)
    ks = sorted({1, max(1, k // 2), k})
    cpu = nnk_solve_cosine(X, g, ks, tol=TOL)
    for k_i, (res, theta_dev), c in zip(ks, solve(X, g, ks, tol=TOL), cpu):
        theta = res.theta
        assert theta.shape == (B, k_i) and (theta >= 0).all()
        np.testing.assert_array_equal(theta, theta_dev.cpu().numpy())
        # certified wherever the CPU solver certifies (nearly collinear neighbors with d < k
        # defeat both at 1e-8 now and then); a query re-solved on the CPU gets exactly the CPU
        # path's weights, which its own tests hold against nnls
        certified = res.kkt_residual <= TOL
        assert (certified | (c.kkt_residual > TOL)).all()
        np.testing.assert_array_equal(theta[res.fallback], c.theta[res.fallback])
        # recomputed here from scratch, at the same tolerance
        assert (certificate(X[:, :k_i], g[:, :k_i], theta)[certified] <= 1.01 * TOL).all()
        present = np.abs(X[:, :k_i]).sum(-1) > 0  # zero rows: the missing neighbors
        assert not theta[~present].any()
        ref = oracle(q, X[:, :k_i], present)
        # the objective is unique even where theta is not (duplicates): no worse than nnls's, to the
        # bound the CPU solver's tests use (a certificate at 1e-8 allows that much on collinear data)
        ours, theirs = objective(X[:, :k_i], g[:, :k_i], theta), objective(X[:, :k_i], g[:, :k_i], ref)
        assert ((ours <= theirs + 1e-9 * np.abs(theirs)) | res.fallback).all()
        if kind in ("random", "clustered") and k_i <= d + 1:  # G of full rank: a unique minimiser
            np.testing.assert_allclose(theta, ref, atol=1e-7)


def test_k_equals_one_is_the_closed_form():
    q, X, g = problem(3, 20, 1, 8, "random")
    ((res, _),) = solve(X, g, [1])
    # one neighbor: theta = g / G_11 = g (G_11 = 1 for a unit row), positive since g > 0
    np.testing.assert_allclose(
        res.theta[:, 0], g[:, 0] / (0.5 * (1 + (X[:, 0].astype(np.float64) ** 2).sum(1))), rtol=1e-14
    )


def test_forced_fallback_is_counted_and_still_exact(monkeypatch):
    """An engine that proposes the wrong supports: every query goes to the CPU solver, answer unchanged."""
    q, X, g = problem(5, 16, 12, 10, "clustered")

    def wrong(G, g, tol, max_iter, warm=None):
        theta = torch.zeros(g.shape, dtype=torch.float64)
        theta[:, -1] = 1.0  # the farthest neighbor alone: never the optimum here
        return theta, torch.zeros(g.shape[0], dtype=torch.int64), torch.zeros(g.shape[0], dtype=torch.bool)

    good = [r for r, _ in solve(X, g, [6, 12])]
    monkeypatch.setattr(torch_solver, "active_set", wrong)
    forced = [r for r, _ in solve(X, g, [6, 12])]
    assert forced[0].fallback.all()
    for r, ref in zip(forced, good):
        assert (r.kkt_residual <= TOL).all()
        np.testing.assert_allclose(r.theta, ref.theta, atol=1e-12)
        np.testing.assert_allclose(
            r.theta, oracle(q, X[:, : r.theta.shape[1]], np.ones(r.theta.shape, bool)), atol=1e-7
        )
    assert not good[0].fallback.any()


def test_results_do_not_depend_on_the_batch():
    """Per query, the same numbers whether solved alone, in halves or all together."""
    q, X, g = problem(9, 40, 25, 16, "clustered")
    whole = [r.theta for r, _ in solve(X, g, [5, 15, 25])]
    for parts in ([slice(0, 1), slice(1, 40)], [slice(0, 17), slice(17, 40)]):
        pieces = [[r.theta for r, _ in solve(X[s], g[s], [5, 15, 25])] for s in parts]
        for i, full in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([p[i] for p in pieces]), full)


def test_equals_the_cpu_solver():
    q, X, g = problem(1, 60, 40, 24, "clustered")
    for (res, _), cpu in zip(solve(X, g, [10, 20, 40]), nnk_solve_cosine(X, g, [10, 20, 40])):
        np.testing.assert_array_equal(res.theta > 0, cpu.theta > 0)
        np.testing.assert_allclose(res.theta, cpu.theta, rtol=0, atol=1e-12)


def test_bad_shapes_and_k_values():
    q, X, g = problem(1, 2, 5, 4, "random")
    with pytest.raises(InputError, match="k_values must increase"):
        solve(X, g, [3, 3])
    with pytest.raises(InputError, match="k_values must increase"):
        solve(X, g, [6])
    with pytest.raises(InputError, match="X must be"):
        solve(X, g[:, :3], [2])


def test_empty_batch():
    X = np.zeros((0, 5, 3), np.float32)
    ((res, _),) = solve(X, np.zeros((0, 5)), [5])
    assert res.theta.shape == (0, 5)
