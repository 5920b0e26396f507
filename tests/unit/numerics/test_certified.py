"""nnkcli.numerics.certified: the rounding bounds hold against float64 products at the extremes, and the
certified top k is the exact top k (a sort by float64 similarity, then id) wherever it says so."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.numerics.certified import (
    TINY,
    U_BF16,
    bf16_bound,
    certified_topk,
    exact_sims,
    fp32_bound,
    gamma,
    interval,
    row_norms,
)

#: the dimensions of the bound tests: the fast tier takes three, the slow tier all
DIMS = (2, 384, 784, *(pytest.param(d, marks=pytest.mark.slow) for d in (3, 17, 128, 4096)))


def _real_dot(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The oracle: float64 products of float32 rows (exact products; a float64 sum, error ~1e-16)."""
    return q.astype(np.float64) @ x.astype(np.float64).T


def _inputs(d: int, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """(q (8, d), x (64, d)) float32 of one kind of input."""
    if kind == "unit":
        q, x = rng.normal(size=(8, d)), rng.normal(size=(64, d))
    elif kind == "equal":  # all-equal coordinates, signs alternating per row: sums of equal terms
        q = np.ones((8, d)) * np.where(np.arange(8)[:, None] % 2, -1, 1)
        x = np.ones((64, d))
    elif kind == "signs":  # one magnitude, random signs: large cancellation
        q, x = np.sign(rng.normal(size=(8, d))), np.sign(rng.normal(size=(64, d)))
    else:  # "off-grid": just below the midpoint between two bfloat16 neighbors, one sign: rounding adds up
        scale = 2.0 ** -np.ceil(np.log2(np.sqrt(d)))  # a power of two: rows of norm ~1, not normalized
        off = scale * (1.0 + 2.0**-8 - 2.0**-19)
        return np.full((8, d), off, np.float32), np.full((64, d), off, np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return q.astype(np.float32), x.astype(np.float32)


def test_gamma_is_highams_bound():
    assert gamma(1, 2.0**-24) == pytest.approx(2.0**-24 / (1 - 2.0**-24), rel=1e-15)
    assert gamma(784, 2.0**-24) == pytest.approx(784 * 2.0**-24, rel=1e-4)
    with pytest.raises(ValueError):
        gamma(2**24, 2.0**-24)


def test_row_norms_are_upper_bounds_and_close():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 777)).astype(np.float32) * np.logspace(-30, 10, 200, dtype=np.float32)[:, None]
    exact = np.sqrt((a.astype(np.float64) ** 2).sum(axis=1))
    got = row_norms(a)
    floor = np.sqrt(777 * TINY) * 1.01  # squares below float32's range are covered by the denormal term
    assert (got >= exact).all() and (got <= exact * (1 + 1e-4) + floor).all()


@pytest.mark.parametrize("kind", ["unit", "equal", "signs", "off-grid"])
@pytest.mark.parametrize("d", DIMS)
def test_fp32_bound_holds(d, kind):
    rng = np.random.default_rng(d)
    q, x = _inputs(d, kind, rng)
    f = (q @ x.T).astype(np.float64)
    err = np.abs(f - _real_dot(q, x))
    bound = fp32_bound(d, row_norms(q)[:, None], row_norms(x)[None, :])
    assert (err <= bound).all()
    assert bound.max() <= 1.01 * d * 2.0**-24 * 1.01  # not vacuous: gamma_d for unit rows


def _bf16(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16, as float32 values (an independent oracle: via float64 arithmetic)."""
    a64 = a.astype(np.float64)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.abs(a64), where=a64 != 0, out=np.zeros_like(a64)))
    ulp = 2.0 ** (e - 7)
    return (np.round(a64 / ulp) * ulp).astype(np.float32)  # np.round: half to even


def test_round_bf16_is_round_to_nearest_even():
    from nnkcli.index_bf16 import round_bf16

    rng = np.random.default_rng(1)
    a = np.concatenate([rng.normal(size=5000), [0.0, 1.0, 1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8)]])
    a = a.astype(np.float32)
    bits, values = round_bf16(a)
    np.testing.assert_array_equal(values, _bf16(a))
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), values)
    assert np.abs(values - a).max() <= U_BF16 * np.abs(a).max()
    torch = pytest.importorskip("torch")  # the index's rows are rounded by torch: the same rounding
    rounded = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(rounded, _bf16(a))


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["unit", "equal", "signs", "off-grid"])
@pytest.mark.parametrize("d", [*DIMS[:1], *(pytest.param(d, marks=pytest.mark.slow) for d in (384, 784)), *DIMS[3:]])
def test_bf16_bound_holds_for_torchs_product(d, kind):
    """torch's bfloat16 product (oneDNN where the CPU has bf16) stays within the bound, and the bound is tight-ish."""
    torch = pytest.importorskip("torch")
    from nnkcli.index_bf16 import round_bf16

    rng = np.random.default_rng(d + 1)
    q, x = _inputs(d, kind, rng)
    (qb, qlow), (xb, xlow) = round_bf16(q), round_bf16(x)
    as_bf16 = lambda bits: torch.from_numpy(bits).view(torch.bfloat16)  # noqa: E731
    b = torch.mm(as_bf16(qb), as_bf16(xb).T).float().numpy().astype(np.float64)
    bound = bf16_bound(
        d,
        b,
        row_norms(qlow)[:, None],
        row_norms(q - qlow)[:, None],
        row_norms(xlow)[None, :],
        row_norms(x - xlow)[None, :],
        row_norms(x)[None, :],
        row_norms(q)[:, None],
    )
    err = np.abs(b - _real_dot(q, x))
    assert (err <= bound).all(), (err / bound).max()
    assert bound.max() <= 3.1 * 2.0**-8 + gamma(d, 2.0**-24) * 1.1  # a few x 2^-8 for unit rows
    if kind == "off-grid" and d >= 128:
        assert (err / bound).max() > 0.25  # coherent rounding comes near the bound: no term is lost


def _oracle_topk(t: np.ndarray, k: int) -> np.ndarray:
    """Exact order: similarity descending, then id ascending (a plain lexsort)."""
    return np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in t])


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 60),
    m=st.integers(1, 6),
    data=st.data(),
    noise=st.sampled_from([0.0, 1e-9, 1e-3, 0.05]),
    levels=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_certified_topk_is_the_exact_top_k_where_certified(n, m, data, noise, levels, seed):
    """Values within +/- noise of the exact sims (with many exact ties: few levels), any candidate count."""
    k = data.draw(st.integers(1, n))
    c = data.draw(st.integers(k, n))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, levels, size=(m, n)) / levels + rng.choice([0.0, 1e-12], size=(m, n))
    v = t + rng.uniform(-noise, noise, size=t.shape)
    order = np.argsort(-v, axis=1, kind="stable")[:, :c]
    ids = order.astype(np.int64)
    vc = np.take_along_axis(v, order, 1)
    lo, hi = interval(vc, noise)
    others = np.ones((m, n), dtype=bool)
    np.put_along_axis(others, order, False, axis=1)
    upper_out = np.where(others.any(1), np.where(others, v, -np.inf).max(1) + noise, -np.inf)
    calls = []

    def sims_of(qi, rows):
        calls.append(len(rows))
        return t[qi, rows]

    top, certified, computed = certified_topk(ids, lo, hi, upper_out, k, sims_of)
    expected = _oracle_topk(t, k)
    assert computed == sum(calls)
    if c == n:
        assert certified.all()
    for i in np.flatnonzero(certified):
        assert set(top[i]) == set(expected[i])
        assert top[i, -1] == expected[i, -1]  # the exact k-th is last
    assert (top[~certified] == -1).all()
    if noise == 0.0 and levels >= n * 4:
        assert certified.mean() > 0  # distinct exact values: the bounds prove something


def test_exact_sims_do_not_depend_on_the_block_shape():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 300)).astype(np.float32)
    X = rng.normal(size=(5, 40, 300)).astype(np.float32)
    whole = exact_sims(X, q)
    for i in range(5):
        for j in (0, 7, 39):
            assert exact_sims(X[i : i + 1, j : j + 1], q[i : i + 1])[0, 0] == whole[i, j]


@pytest.mark.parametrize("kind", ["unit", "equal", "signs", "off-grid"])
@pytest.mark.parametrize("d", DIMS)
def test_bf16_bound_holds_for_mkls_float32_product(d, kind):
    """oneMKL's product returns the float32 sum: within the bound with out_unit 2^-24, a bound far below torch's
    (no output rounding) for unit rows."""
    from nnkcli.index_bf16 import round_bf16
    from nnkcli.index_mkl import gemm_bf16, mkl_unavailable

    if mkl_unavailable() is not None:
        pytest.skip(mkl_unavailable())
    rng = np.random.default_rng(d + 3)
    q, x = _inputs(d, kind, rng)
    (qb, qlow), (xb, xlow) = round_bf16(q), round_bf16(x)
    out = np.empty((len(q), len(x)), dtype=np.float32)
    gemm_bf16(qb, xb, out)
    b = out.astype(np.float64)
    args = (row_norms(qlow)[:, None], row_norms(q - qlow)[:, None], row_norms(xlow)[None, :])
    rest = (row_norms(x - xlow)[None, :], row_norms(x)[None, :], row_norms(q)[:, None])
    bound = bf16_bound(d, b, *args, *rest, 0.0, 2.0**-24)
    err = np.abs(b - _real_dot(q, x))
    assert (err <= bound).all(), (err / bound).max()
    if kind == "unit" and d >= 128:
        assert (bound < bf16_bound(d, b, *args, *rest)).all()  # torch's 2^-8 |b| output term is gone
    if kind == "off-grid" and d >= 128:
        assert (err / bound).max() > 0.25  # coherent rounding comes near the bound: no term is lost


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["unit", "equal", "signs", "off-grid"])
@pytest.mark.parametrize("d", DIMS)
def test_the_shifted_bf16_bound_holds_and_drops_the_output_rounding(d, kind):
    """The product with a shift coordinate (-c on the query's side, 1 on the row's), c a bfloat16 number near the
    similarities: |b + c - t| within the bound, whose output term 2^-8 |b| is now small."""
    torch = pytest.importorskip("torch")
    from nnkcli.index_bf16 import round_bf16

    rng = np.random.default_rng(d + 7)
    q, x = _inputs(d, kind, rng)
    real = _real_dot(q, x)
    (qb, qlow), (xb, xlow) = round_bf16(q), round_bf16(x)
    c_bits, c = round_bf16(np.median(real, axis=1).astype(np.float32))  # a shift per query, near its values
    qa = np.concatenate([qb, (c_bits ^ np.uint16(0x8000))[:, None]], axis=1)  # -c
    xa = np.concatenate([xb, np.full((len(xb), 1), 0x3F80, np.uint16)], axis=1)  # 1.0
    as_bf16 = lambda bits: torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bfloat16)  # noqa: E731
    b = torch.mm(as_bf16(qa), as_bf16(xa).T).float().numpy().astype(np.float64)
    shift = c.astype(np.float64)[:, None]
    args = (row_norms(qlow)[:, None], row_norms(q - qlow)[:, None], row_norms(xlow)[None, :])
    rest = (row_norms(x - xlow)[None, :], row_norms(x)[None, :], row_norms(q)[:, None])
    bound = bf16_bound(d, b, *args, *rest, shift)
    err = np.abs(b + shift - real)
    assert (err <= bound).all(), (err / bound).max()
    unshifted = bf16_bound(d, b + shift, *args, *rest)
    # where the shift takes at least half of a product away, its bound is the smaller (its output term, 2^-8 |b|)
    near = (np.abs(b) <= 0.5 * np.abs(b + shift)) & (np.abs(shift) <= 4 * np.abs(b + shift))
    assert (bound[near] <= unshifted[near] * (1 + 1e-12)).all()
    if kind == "unit" and d >= 128:  # products of many coordinates: output rounding is a real part of the bound
        assert near.any() and bound[near].sum() < unshifted[near].sum()
