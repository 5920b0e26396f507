"""nnkcli.index_mkl: oneMKL's bfloat16 product is the product of the bfloat16 values, summed in float32 (within
Higham's bound of the float64 product of the same values), for any shape and row slice; bad layouts are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.numerics.certified import gamma


def _mkl_or_skip():
    from nnkcli.index_mkl import mkl_unavailable

    why = mkl_unavailable()
    if why is not None:
        pytest.skip(why)


def _values(bits: np.ndarray) -> np.ndarray:
    """float64 values of bfloat16 bits (an independent decoding: sign, exponent, significand)."""
    b = bits.astype(np.int64)
    sign = np.where(b & 0x8000, -1.0, 1.0)
    exp, frac = (b >> 7) & 0xFF, b & 0x7F
    normal = sign * (1.0 + frac / 128.0) * 2.0 ** (exp - 127)
    return np.where(exp == 0, sign * (frac / 128.0) * 2.0**-126, normal)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 70),
    d=st.sampled_from([1, 2, 31, 32, 33, 384, 785]),
    start=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_gemm_bf16_is_the_float32_sum_of_the_bfloat16_products(m, n, d, start, seed):
    _mkl_or_skip()
    from nnkcli.index_bf16 import round_bf16
    from nnkcli.index_mkl import gemm_bf16

    rng = np.random.default_rng(seed)
    a, _ = round_bf16(rng.normal(size=(m, d)).astype(np.float32))
    rows, _ = round_bf16(rng.normal(size=(n + start, d)).astype(np.float32))
    b = rows[start:]  # a slice of rows, as the search passes its blocks
    out = np.full((m, n), np.nan, dtype=np.float32)
    gemm_bf16(a, b, out)
    exact = _values(a) @ _values(b).T  # products of bfloat16 values are exact in float64; the sum nearly so
    bound = gamma(d, 2.0**-24) * (np.abs(_values(a)) @ np.abs(_values(b)).T) + 1e-12
    assert (np.abs(out - exact) <= bound).all()


def test_gemm_bf16_refuses_what_it_would_misread():
    _mkl_or_skip()
    from nnkcli.index_mkl import gemm_bf16

    a, b = np.zeros((3, 8), np.uint16), np.zeros((5, 8), np.uint16)
    with pytest.raises(ValueError, match="shapes"):
        gemm_bf16(a, b, np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="uint16"):
        gemm_bf16(a.astype(np.int32), b, np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm_bf16(np.zeros((8, 3), np.uint16).T, b, np.empty((3, 5), np.float32))
    out = np.full((3, 5), 7.0, np.float32)
    gemm_bf16(np.zeros((3, 0), np.uint16), np.zeros((5, 0), np.uint16), out)
    assert (out == 0).all()  # an empty inner dimension: zeros, not the old contents


def test_a_missing_library_is_a_reason_not_a_crash(monkeypatch):
    from nnkcli import index_mkl

    monkeypatch.setattr(index_mkl, "library_path", lambda: None)
    index_mkl._gemm.cache_clear()
    try:
        assert index_mkl.mkl_unavailable() == "oneMKL is not installed (the mkl extra)"
        with pytest.raises(RuntimeError, match="not installed"):
            index_mkl.gemm_bf16(np.zeros((1, 1), np.uint16), np.zeros((1, 1), np.uint16), np.zeros((1, 1), np.float32))
    finally:
        index_mkl._gemm.cache_clear()
