"""The compiled per-query NNK kernel (nnkcli.numerics.compiled), against independent oracles.

The oracle is scipy.optimize.nnls on the feature-space least-squares form of the cosine
problem (no Gram matrix); certificates are recomputed from a float64 Gram matrix built
by a plain loop. ``test_cosine.py`` runs the whole ``nnk_solve_cosine`` suite on this
engine too; here the kernel is called directly, so a fallback to numpy cannot hide a
wrong answer.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnk_data
import nnk_oracles as oracles  # tests/helpers (pytest's pythonpath)
from nnkcli.errors import InputError
from nnkcli.numerics import compiled, cosine
from nnkcli.numerics.active_set import _DEPENDENT, _ENTER, _EXACT
from nnkcli.numerics.cosine import nnk_solve_cosine

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the 'fast' extra)")

blocks64, kkt, nnls_weights = oracles.blocks64, oracles.kkt, oracles.nnls_weights

TOL = 1e-8
problem = partial(nnk_data.nnk_problem, dtype=np.float32)


def run(X, g, ks, **kw):
    return compiled.solve_cosine_path(X, g, ks, TOL, _ENTER, _EXACT, _DEPENDENT, 3 * ks[-1] + 20, **kw)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 40), d=st.integers(8, 48), clustered=st.booleans())
def test_kernel_weights_equal_nnls_and_carry_a_float64_certificate(seed, k, d, clustered):
    q, X = problem(seed, 4, k, d, "clustered" if clustered else "random")
    G, g = blocks64(q, X)
    ks = sorted({max(1, k // 3), k})
    thetas, resid, _, objective, failed = run(X, g, ks)
    assert not failed.any()
    for i, kk in enumerate(ks):
        theta = thetas[i]
        assert theta.shape == (4, kk) and (theta >= 0).all()
        expected = kkt(G[:, :kk, :kk], g[:, :kk], theta)
        assert (expected <= TOL).all()
        np.testing.assert_allclose(resid[i], expected, rtol=0, atol=1e-13)
        np.testing.assert_allclose(theta, nnls_weights(q, X[:, :kk]), atol=1e-7)
        obj = 0.5 * np.einsum("bi,bij,bj->b", theta, G[:, :kk, :kk], theta) - np.einsum("bi,bi->b", g[:, :kk], theta)
        np.testing.assert_allclose(objective[i], obj, rtol=1e-9, atol=1e-13)


def test_a_sweep_continues_from_the_previous_k_and_matches_cold_solves():
    q, X = problem(4, 20, 60, 24, "clustered")
    _, g = blocks64(q, X)
    ks = list(range(5, 61, 5))
    path, *_ = run(X, g, ks)
    for i, k in enumerate(ks):
        (cold,), *_ = run(np.ascontiguousarray(X[:, :k]), np.ascontiguousarray(g[:, :k]), [k])
        assert ((path[i] > 0) == (cold > 0)).all()
        np.testing.assert_allclose(path[i], cold, atol=1e-12)


def test_a_support_cap_that_holds_the_support_changes_no_weight():
    # ~20 support changes over the sweep with room for 12 rows: slots are freed and reused
    q, X = problem(9, 6, 80, 10, "clustered")
    _, g = blocks64(q, X)
    ks = list(range(4, 81, 4))
    roomy, *_ = run(X, g, ks)
    tight, resid, _, _, failed = run(X, g, ks, row_cap=12)
    assert not failed.any()
    for a, b in zip(roomy, tight):
        np.testing.assert_array_equal(a, b)


def test_support_larger_than_the_cap_is_flagged():
    q, X = problem(1, 3, 40, 30)
    _, g = blocks64(q, X)
    _, _, _, _, failed = run(X, g, [40], row_cap=3)
    assert failed.all()


def test_missing_neighbors_never_get_weight():
    q, X = problem(5, 3, 12, 8, "clustered")
    _, g = blocks64(q, X)
    X[1, 3:7] = 0.0
    g[1, 3:7] = 0.0
    (theta,), resid, _, _, failed = run(X, g, [12])
    assert not failed.any() and (theta[1, 3:7] == 0).all() and (resid <= TOL).all()


def test_duplicate_neighbors_split_nothing_and_stay_certified():
    q, X = problem(2, 4, 15, 12, "clustered")
    X[:, 7] = X[:, 2]  # an exact duplicate: dependent on the support, never enters beside its twin
    G, g = blocks64(q, X)
    (theta,), resid, _, _, failed = run(X, g, [15])
    ok = ~failed[0]
    assert ok.any()
    assert ((theta[ok, 2] == 0) | (theta[ok, 7] == 0)).all()
    assert (kkt(G[ok], g[ok], theta[ok]) <= TOL).all()


def test_float64_features_are_accepted():
    q, X = problem(3, 5, 20, 16)
    _, g = blocks64(q, X)
    (t32,), *_ = run(X, g, [20])
    (t64,), *_ = run(X.astype(np.float64), g, [20])
    np.testing.assert_allclose(t32, t64, atol=1e-14)  # float32 values widen exactly


def test_every_query_is_independent_of_its_batch():
    q, X = problem(6, 30, 25, 12)
    _, g = blocks64(q, X)
    whole, *_ = run(X, g, [7, 25])
    for i in (0, 13, 29):
        one, *_ = run(np.ascontiguousarray(X[i : i + 1]), np.ascontiguousarray(g[i : i + 1]), [7, 25])
        for a, b in zip(whole, one):
            np.testing.assert_array_equal(a[i : i + 1], b)


def test_iteration_limit_flags_the_query_and_numpy_solves_it(monkeypatch):
    q, X = problem(8, 6, 30, 20, "clustered")
    G, g = blocks64(q, X)
    _, _, _, _, failed = compiled.solve_cosine_path(X, g, [30], TOL, _ENTER, _EXACT, _DEPENDENT, 2)
    assert failed.all()
    # through nnk_solve_cosine every flagged query goes to the numpy path, and comes back certified
    real = compiled.solve_cosine_path
    monkeypatch.setattr(compiled, "solve_cosine_path", lambda *a, **kw: real(*a[:-1], 2, **kw))
    calls = []
    numpy_path = cosine._solve_numpy
    monkeypatch.setattr(cosine, "_solve_numpy", lambda X_, *a: calls.append(len(X_)) or numpy_path(X_, *a))
    (res,) = nnk_solve_cosine(X, g, [30])
    assert calls == [6]
    assert (kkt(G, g, res.theta) <= TOL).all() and res.certified.all()


def test_non_finite_features_are_an_input_error():
    q, X = problem(0, 3, 10, 6)
    _, g = blocks64(q, X)
    X[2, 0, 1] = np.nan
    _, _, _, _, failed = run(X, g, [10])
    assert failed[0, 2]
    with pytest.raises(InputError, match="NaN"):
        nnk_solve_cosine(X, g, [10])


def test_the_environment_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    assert not compiled.available()
    monkeypatch.setenv("NNKCLI_COMPILED", "1")
    assert compiled.available()


def test_without_numba_the_numpy_path_runs(monkeypatch):
    monkeypatch.setattr(compiled, "_KERNEL", [None])
    assert not compiled.available()
    q, X = problem(3, 4, 10, 6)
    _, g = blocks64(q, X)
    (res,) = nnk_solve_cosine(X, g, [10])
    assert res.certified.all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 60), d=st.integers(8, 64), clustered=st.booleans())
def test_both_engines_find_the_same_supports_and_weights(seed, k, d, clustered):
    q, X = problem(seed, 6, k, d, "clustered" if clustered else "random")
    _, g = blocks64(q, X)
    ks = sorted({max(1, k // 2), k})
    fast = cosine._solve_compiled(X, g, ks, TOL, None)
    reference = cosine._solve_numpy(X, g, ks, TOL, None)
    for a, b in zip(fast, reference):
        assert ((a.theta > 0) == (b.theta > 0)).all()
        np.testing.assert_allclose(a.theta, b.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.objective, b.objective, rtol=1e-10, atol=1e-14)


def test_warm_up_loads_the_kernel_once_on_a_thread(monkeypatch):
    monkeypatch.setattr(compiled, "_KERNEL", [])
    monkeypatch.setattr(compiled, "_WARMING", None)
    compiled.warm_up()
    thread = compiled._WARMING
    assert thread is not None
    thread.join(timeout=120)
    assert compiled._KERNEL and compiled._KERNEL[0] is not None
    compiled.warm_up()
    assert compiled._WARMING is thread  # no second thread


def test_warm_up_shortens_the_switch_interval_while_it_runs_then_restores_it(monkeypatch):
    """numba's load holds the GIL; the index load beside it waited up to 5 ms for every read."""
    import sys
    import threading

    monkeypatch.setattr(compiled, "_KERNEL", [])
    monkeypatch.setattr(compiled, "_WARMING", None)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        release, seen = threading.Event(), []

        def slow_kernel():
            seen.append(sys.getswitchinterval())
            release.wait(30)
            return None  # as if numba were missing: nothing to run

        monkeypatch.setattr(compiled, "_kernel", slow_kernel)
        compiled.warm_up()
        assert sys.getswitchinterval() == pytest.approx(compiled.WARM_UP_SWITCH_INTERVAL)
        release.set()
        compiled._WARMING.join(timeout=30)
        assert seen == [pytest.approx(compiled.WARM_UP_SWITCH_INTERVAL)]
        assert sys.getswitchinterval() == pytest.approx(0.005)

        # a value someone set meanwhile is theirs: left alone
        monkeypatch.setattr(compiled, "_WARMING", None)
        release.clear()
        compiled.warm_up()
        sys.setswitchinterval(0.002)
        release.set()
        compiled._WARMING.join(timeout=30)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_warm_up_does_nothing_when_turned_off(monkeypatch):
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    monkeypatch.setattr(compiled, "_KERNEL", [])
    monkeypatch.setattr(compiled, "_WARMING", None)
    compiled.warm_up()
    assert compiled._WARMING is None and compiled._KERNEL == []


def test_a_kernel_that_fails_to_run_turns_itself_off_and_numpy_answers(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no target machine for this CPU")

    monkeypatch.setattr(compiled, "_KERNEL", [broken])
    q, X = problem(2, 4, 12, 8)
    G, g = blocks64(q, X)
    with caplog.at_level("WARNING", logger="nnkcli"):
        (res,) = nnk_solve_cosine(X, g, [12])
    assert (kkt(G, g, res.theta) <= TOL).all() and res.certified.all()
    assert "compiled NNK kernel failed" in caplog.text and "RuntimeError" in caplog.text
    assert not compiled.available()


def test_expected_says_whether_the_engine_will_run_without_loading_it(monkeypatch):
    monkeypatch.setattr(compiled, "_KERNEL", [])
    assert compiled.expected()  # numba is importable here (the module is skipped otherwise)
    assert compiled._KERNEL == []  # nothing was loaded
    monkeypatch.setattr(compiled, "_KERNEL", [None])
    assert not compiled.expected()
    monkeypatch.setattr(compiled, "_KERNEL", [])
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    assert not compiled.expected()


def _exact_dot(x, v) -> float:
    """<x, v> exactly (as fractions), rounded once."""
    from fractions import Fraction

    return float(sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, v, strict=True)), Fraction(0)))


def _rows(rng, kind: str, k: int, d: int) -> np.ndarray:
    if kind == "unit":
        X = rng.standard_normal((k, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    elif kind == "positive":  # no cancellation: every rounding error of a long sum points one way
        X = np.abs(rng.standard_normal((k, d))) + 1.0
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    elif kind == "tiny":  # squares and products below float32's normal range (gradual underflow)
        X = rng.standard_normal((k, d)) * 1e-22
    else:  # "wide": magnitudes over 60 orders of ten in one row
        X = rng.standard_normal((k, d)) * 10.0 ** rng.integers(-30, 30, size=(k, d))
    return X.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 9),
    d=st.sampled_from([1, 2, 3, 7, 64, 384, 784, 4096]),
    kind=st.sampled_from(["unit", "positive", "tiny", "wide"]),
    vscale=st.sampled_from([1e-3, 1.0, 1e6]),
)
def test_float32_products_and_norms_stay_within_the_bound_the_engine_uses(seed, k, d, kind, vscale):
    """|s32 - <x, v>| <= gamma_{d+2}(2^-24) ||x|| ||v|| (+ underflow), the bound ``err`` is built on
    (the engine doubles it); the norm bound is never below the exact norm. Reference: fractions."""
    from nnkcli.numerics import compiled_kernel as ck

    rng = np.random.default_rng(seed)
    X = _rows(rng, kind, k, d)
    v64 = rng.standard_normal(d) * vscale
    if kind == "positive":
        v64 = np.abs(v64)
    v32 = v64.astype(np.float32)
    s_plain = np.full(k, np.nan, dtype=np.float32)
    s_fused = np.full(k, np.nan, dtype=np.float32)
    xn = np.zeros(k)
    ck.products32(X, 0, k, v32, s_plain)
    ck.products32n(X, 0, k, v32, s_fused, xn)
    gamma = (d + 2) * ck.U32 / (1 - (d + 2) * ck.U32)
    vnorm = float(np.sqrt(_exact_dot(v64, v64)))
    for i in range(k):
        exact_norm = float(np.sqrt(_exact_dot(X[i], X[i])))
        assert xn[i] >= exact_norm
        bound = gamma * xn[i] * vnorm + d * ck.UNDER * (1 + xn[i])
        exact = _exact_dot(X[i], v64)
        for s in (s_plain[i], s_fused[i]):
            assert abs(float(s) - exact) <= bound, (i, float(s), exact, bound)


def test_make_exact_recomputes_only_the_gradients_that_may_be_positive():
    from nnkcli.numerics import compiled_kernel as ck

    rng = np.random.default_rng(0)
    Xb = _rows(rng, "unit", 6, 16)
    gb = rng.uniform(0.5, 1.0, 6)
    v64 = rng.standard_normal(16)
    in_set = np.array([True, False, False, False, False, False])
    w = np.array([5.0, -1e-3, -1e-3, 2e-9, -1.0, 0.3])
    err = np.array([0.0, 2e-3, 1e-4, 1e-9, 0.5, 0.0])
    known = np.array([False, False, False, False, False, True])
    ck.make_exact(Xb, gb, 6, 0.7, v64, in_set, w, err, known)
    exact = [gb[j] - 0.5 * (0.7 + _exact_dot(Xb[j], v64)) for j in range(6)]
    assert known.tolist() == [False, True, False, True, False, True]  # w + err > 0, outside the support
    for j in (1, 3):
        assert w[j] == pytest.approx(exact[j], abs=1e-14) and err[j] == 0.0
    assert w[[0, 2, 4, 5]].tolist() == [5.0, -1e-3, -1.0, 0.3]  # the rest as they were


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 30), levels=st.sampled_from([3, 1000]))
def test_runners_up_are_the_best_other_estimates_that_may_enter_ascending(seed, k, levels):
    from nnkcli.numerics import compiled_kernel as ck

    rng = np.random.default_rng(seed)
    w = rng.integers(-levels, levels, k) / levels  # coarse levels: ties
    err = rng.choice([0.0, 0.3], k)
    in_set, blocked = rng.random(k) < 0.2, rng.random(k) < 0.2
    jb, enter = int(rng.integers(-1, k)), 0.1
    cands = np.full(ck.RUNNERS_UP, -7, dtype=np.int64)
    n = ck.runners_up(w, err, in_set, blocked, k, jb, enter, cands)
    eligible = [j for j in range(k) if j != jb and not in_set[j] and not blocked[j] and w[j] + err[j] > enter]
    best = sorted(eligible, key=lambda j: -w[j])[: ck.RUNNERS_UP]
    assert n == len(best)
    got = cands[:n].tolist()
    assert set(got) <= set(eligible) and sorted(w[got].tolist()) == w[got].tolist()  # ascending
    assert sorted(w[got].tolist()) == sorted(w[best].tolist())  # the best values (ties: any of them)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(4, 40),
    d=st.sampled_from([8, 64, 784]),
    eps=st.sampled_from([1e-3, 1e-4, 3e-5]),
)
def test_near_twins_whose_gradients_float32_cannot_sign_are_decided_in_float64(seed, k, d, eps):
    """Neighbors a distance eps from others: their gradients at the optimum are ~eps^2, inside the
    float32 estimates' error, so the choice and the certificate come from float64 values."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((3, d))
    X = rng.standard_normal((3, k, d))
    half = k // 2
    X[:, half:] = X[:, : k - half] + eps * rng.standard_normal((3, k - half, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    X /= np.linalg.norm(X, axis=2, keepdims=True)
    q, X = q.astype(np.float32), X.astype(np.float32)
    G, g = blocks64(q, X)
    (theta,), resid, _, _, failed = run(X, g, [k])
    ok = ~failed[0]
    assert (kkt(G[ok], g[ok], theta[ok]) <= TOL).all()
    np.testing.assert_allclose(resid[0, ok], kkt(G[ok], g[ok], theta[ok]), rtol=0, atol=1e-13)
    assert ok.sum() >= 2  # a flag is allowed for a dependent pair, not for the batch


@pytest.mark.slow
def test_a_process_that_loaded_the_kernel_freezes_its_heap_at_exit():
    """The interpreter's last collections would walk numba's whole heap (seconds): the exit handlers freeze it."""
    import subprocess
    import sys

    code = (
        "import atexit, gc\n"
        "from nnkcli.numerics import compiled\n"
        "assert gc.get_freeze_count() == 0 and compiled.available()\n"
        "atexit._run_exitfuncs()\n"
        "print(gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr
