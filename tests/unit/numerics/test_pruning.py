"""The pruning solver (the NNK paper's algorithm) against an independent per-query implementation.

The oracle below is written from the algorithm's description (issue 12, item 4), one query
at a time with Python lists; it shares no code with ``nnkcli.numerics.pruning``. Both call
LAPACK's Cholesky, because what a *failed* factorisation leaves behind (and so what the
published code solves with after adding 1e-10 to its diagonal) is LAPACK's behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import get_lapack_funcs

from nnkcli.errors import InputError
from nnkcli.numerics.pruning import cosine_blocks_float32, pruning_solve
from nnkcli.numerics.scores import nnk_scores
from nnkcli.numerics.solver import nnk_solve

FAST = settings(max_examples=60, deadline=None)


def oracle_one(Gq, gq):
    """Weights of one query by the published pruning algorithm, straight from its description."""
    k = len(gq)
    Gq = np.asarray(Gq, dtype=np.float32)
    gq = np.asarray(gq, dtype=np.float32)
    # a duplicate of the query: g_j > 1 - 1e-10, compared in the kernel's float32
    dups = [j for j in range(k) if gq[j] > np.float32(1 - 1e-10)]
    if dups:
        return [float(gq[j]) if j in dups else 0.0 for j in range(k)]
    keep = [j for j in range(k) if gq[j] > np.float32(1e-10)]
    weights = [0.0] * k
    for _ in range(50 * k):
        weights = [0.0] * k
        if keep:
            A = np.asfortranarray(Gq[np.ix_(keep, keep)])
            b = gq[keep].copy()
            (potrf,) = get_lapack_funcs(("potrf",), (A,))
            factor, info = potrf(A, lower=False, clean=True)
            if info > 0:
                factor = factor + 1e-10 * np.eye(len(keep))  # float64 from here on
            (potrs,) = get_lapack_funcs(("potrs",), (factor, b))
            x, _ = potrs(factor, b, lower=False)
            for j, v in zip(keep, x):
                weights[j] = float(v)
        small = [abs(w) for w in weights if w < 1e-10]
        keep = [j for j in keep if weights[j] > 1e-10]
        if not small or max(small) <= 1e-10:
            break
    return [w if w >= 1e-10 else 0.0 for w in weights]


def unit_rows(rng, shape):
    x = rng.standard_normal(shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def check_against_oracle(G, g, labels, C):
    res = pruning_solve(G, g)
    want = np.array([oracle_one(G[b], g[b]) for b in range(len(g))]).reshape(g.shape)
    np.testing.assert_allclose(res.theta, want, rtol=1e-5, atol=1e-5)
    got_pred = nnk_scores(res.theta, labels, C).argmax(axis=1)
    want_pred = nnk_scores(want, labels, C).argmax(axis=1)
    assert (got_pred == want_pred).all()  # accuracy exactly
    assert (res.theta >= 0).all()
    return res


@FAST
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 6), k=st.integers(1, 25), d=st.integers(2, 40))
def test_pruning_matches_per_query_oracle(seed, B, k, d):
    # d small against k makes G singular (rank <= d + 1): the failed-Cholesky path
    rng = np.random.default_rng(seed)
    q = unit_rows(rng, (B, d))
    X = unit_rows(rng, (B, k, d))
    G, g = cosine_blocks_float32(q, X)
    check_against_oracle(G, g, rng.integers(0, 4, (B, k)), 4)


def test_singular_gram_from_duplicate_neighbors_takes_the_failed_factor_path():
    rng = np.random.default_rng(3)
    q = unit_rows(rng, (8, 16))
    X = unit_rows(rng, (8, 12, 16))
    X[:, 5] = X[:, 2]  # two identical neighbors: G is exactly singular
    X[:, 9] = X[:, 2]
    G, g = cosine_blocks_float32(q, X)
    res = check_against_oracle(G, g, rng.integers(0, 3, (8, 12)), 3)
    assert res.factor_failed.any()


def test_rank_deficient_gram_k_above_d_plus_one():
    rng = np.random.default_rng(4)
    q = unit_rows(rng, (10, 3))
    X = unit_rows(rng, (10, 30, 3))  # rank(G) <= 4 < 30
    G, g = cosine_blocks_float32(q, X)
    check_against_oracle(G, g, rng.integers(0, 5, (10, 30)), 5)


def test_duplicate_of_the_query_gets_all_the_weight():
    rng = np.random.default_rng(5)
    q = unit_rows(rng, (4, 8))
    X = unit_rows(rng, (4, 10, 8))
    G, g = cosine_blocks_float32(q, X)
    g[1, 3] = np.nextafter(np.float32(1), np.float32(2))  # rounds above 1: the duplicate rule
    res = check_against_oracle(G, g, rng.integers(0, 3, (4, 10)), 3)
    assert res.duplicate.tolist() == [False, True, False, False]
    assert np.flatnonzero(res.theta[1]).tolist() == [3] and res.passes[1] == 0
    # an actual duplicate vector (g == 1 to rounding): the Cholesky passes end on it alone
    X[2, 6] = q[2]
    G, g = cosine_blocks_float32(q, X)
    res = check_against_oracle(G, g, rng.integers(0, 3, (4, 10)), 3)
    theta = res.theta[2] / res.theta[2].sum()
    assert theta[6] > 0.999


def test_pruning_equals_exact_when_no_pruned_neighbor_wants_back_in():
    # two well separated neighbors plus one "behind" the first: every algorithm drops it
    q = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    X = np.array([[[0.9, 0.436, 0.0], [0.9, -0.436, 0.0], [0.8, 0.6, 0.0]]], dtype=np.float32)
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    G, g = cosine_blocks_float32(q, X)
    res = pruning_solve(G, g)
    exact = nnk_solve(G.astype(np.float64), g.astype(np.float64)).theta
    np.testing.assert_allclose(res.theta, exact, atol=1e-5)
    assert res.theta[0, 2] == 0 and res.converged.all()


def test_pass_limit_and_bad_input():
    rng = np.random.default_rng(6)
    G, g = cosine_blocks_float32(unit_rows(rng, (3, 4)), unit_rows(rng, (3, 20, 4)))
    res = pruning_solve(G, g, max_passes=1)
    assert (res.passes <= 1).all()
    with pytest.raises(InputError):
        pruning_solve(G[:, :3], g)
    with pytest.raises(InputError):
        pruning_solve(G, g, max_passes=0)
    bad = g.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError):
        pruning_solve(G, bad)
