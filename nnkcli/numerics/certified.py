"""The exact top k from approximate similarities and a bound on their error: rounding bounds, certification.

A search kernel (``nnkcli.index_kernel.kernel_search``) computes every similarity of a query in
some precision (float32, or bfloat16 inputs), keeps a few more candidates than asked, and
hands their values here with a rigorous bound on each value's distance from the *reference*
similarity: the float64 dot product of the stored float32 vectors (:func:`exact_sims`, the
value every searcher re-ranks by). :func:`certified_topk` then proves, query by query, which
candidates form the exact top ``k`` -- similarity descending, row id ascending -- computing
the float64 similarity only of those the bounds cannot place. A query it cannot prove (its
candidates do not reach far enough below the k-th) is reported, and searched again by the
caller with more candidates or in float32.

The bounds (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1:
a dot product of length d summed in any order in precision u is within
``gamma_d = d u / (1 - d u)`` of sum |x_i y_i|, itself <= ||x|| ||y||):

float32 product   |f - s| <= gamma_d(2^-24) ||q|| ||x||
bfloat16 product  inputs rounded to bfloat16 (q = qh + rq, x = xh + rx, rq and rx exact in
                  float32), a per-query shift c (a bfloat16 number) subtracted as one more
                  coordinate, products exact in float32 (8 x 8 significant bits), summed in
                  float32, the sum rounded to bfloat16 (b = acc / (1 + delta), |delta| <= 2^-8):
                  |b + c - s| <= 2^-8 |b| + gamma_{d+1}(2^-24) (||qh|| ||xh|| + |c|)
                                 + ||qh|| ||rx|| + ||rq|| ||x||
                  (oneMKL's product returns the float32 sum itself, c = 0: the first term is 0,
                  kept as 2^-24 |b| for a margin)
float64 reference |t - s| <= gamma_d(2^-53) ||q|| ||x||  (float32 products are exact in float64)

where s is the real dot product, plus a term for denormals flushed to zero (``TINY``). The
residual norms ||rx||, ||rq|| are the inputs' actual rounding, typically 0.4 x 2^-8 of the
norm where the worst case is 2^-8. Without the shift the output rounding would dominate for
unit vectors (2^-8 |s|, s ~ 0.9 near the top k of dense features); with c near the k-th
similarity it is 2^-8 |s - c|, a small part of the bound there. Norms are
computed in float64 and inflated by ``NORM_SLACK`` to cover their own rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: the search kernels (``--search-kernel``): auto = bf16 where this machine has it, else fp32
SEARCH_KERNELS = ("auto", "fp32", "bf16")
#: unit roundoff of float32, bfloat16 (8 significant bits) and float64
U_FP32, U_BF16, U_FP64 = 2.0**-24, 2.0**-8, 2.0**-53
#: relative inflation of a norm computed in float64 (its own rounding is below d * 2^-53)
NORM_SLACK = 1e-9
#: per coordinate: the most a product can lose to denormals flushed to zero (inputs and sums)
TINY = 2.0**-120


def gamma(d: int, u: float) -> float:
    """Higham's gamma_d = d u / (1 - d u): the relative error bound of a length-``d`` sum in precision ``u``."""
    du = float(d) * u
    if du >= 1:
        raise ValueError(f"no rounding bound for length {d} at unit roundoff {u}")
    return du / (1.0 - du)


def row_norms(a: np.ndarray) -> np.ndarray:
    """Upper bounds on the Euclidean norms of the rows of ``a`` (n, d) float32, float64.

    The squares are summed in float32 (a fast pass) and the sum inflated by its rounding
    bound, gamma_{d+1}(2^-24) (d squares and d - 1 additions), plus the denormal term.
    """
    a = np.asarray(a, dtype=np.float32)
    d = a.shape[1] if a.ndim == 2 else 1
    squares = np.einsum("nd,nd->n", a, a).astype(np.float64)
    return np.sqrt(squares * (1.0 + gamma(d + 1, U_FP32)) + d * TINY) * (1.0 + NORM_SLACK)


def exact_sims(X: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The reference similarities: float64 dot products of ``X`` (B, c, d) float32 with ``q`` (B, d) float32 -> (B, c).

    Every searcher re-ranks by these values, and the certification compares against them,
    so both call this one function (the value of a pair does not depend on B or c).
    """
    # float64 accumulation without a float64 copy of X (which would double the chunk's memory)
    return np.einsum("bkd,bd->bk", X, q, dtype=np.float64)


def reference_slack(d: int, q_norm: np.ndarray, x_norm) -> np.ndarray:
    """Bound on |t - s|, the float64 reference's own error, plus the flushed-denormal term."""
    return gamma(d, U_FP64) * q_norm * x_norm + d * TINY * (1.0 + q_norm) * (1.0 + x_norm)


def fp32_bound(d: int, q_norm: np.ndarray, x_norm) -> np.ndarray:
    """Bound on |f - t| of a float32 product (any summation order) for norms ``q_norm`` and ``x_norm``."""
    return gamma(d, U_FP32) * q_norm * x_norm + reference_slack(d, q_norm, x_norm)


def bf16_bound(
    d: int,
    b: np.ndarray | float,
    q_low: np.ndarray,
    q_res: np.ndarray,
    x_low,
    x_res,
    x_norm,
    q_norm: np.ndarray,
    shift=0.0,
    out_unit: float = U_BF16,
) -> np.ndarray:
    """Bound on |(b + shift) - t| of a bfloat16 product ``b`` (module docstring), broadcasting.

    ``q_low``/``x_low``: norms of the bfloat16-rounded rows; ``q_res``/``x_res``: norms of the
    rounding residuals; ``q_norm``/``x_norm``: norms of the float32 rows. ``shift``: a
    bfloat16 number the product subtracted as one more coordinate (``-shift`` on the query's
    side, 1 on the row's): ``b`` is then the rounding of ``qh . xh - shift``, and the output
    rounding, ``2^-8 |b|``, is small for the similarities near the shift, where the top k's
    boundary lies. The sum has d + 1 terms. ``out_unit``: the unit roundoff of the result's
    rounding, ``U_BF16`` for torch's product (it returns bfloat16); oneMKL's returns the float32
    sum itself, whose rounding the sum's term already holds (``U_FP32`` is passed, a margin).
    """
    return (
        out_unit * np.abs(b)
        + gamma(d + 1, U_FP32) * (q_low * x_low + np.abs(shift))
        + q_low * x_res
        + q_res * x_norm
        + reference_slack(d, q_norm, x_norm)
    )


def floor32(v) -> np.ndarray:
    """The largest float32 number at or below each v (float64); -inf stays -inf."""
    v = np.asarray(v, dtype=np.float64)
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(-np.inf)), f)


def interval(v: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) = v -/+ err, float64, each moved one float outwards so that its own rounding cannot shrink it."""
    v = np.asarray(v, dtype=np.float64)
    return np.nextafter(v - err, -np.inf), np.nextafter(v + err, np.inf)


def order_by_key(key: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row: indices sorting by ``key`` descending, then id ascending (ids < 0 last)."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.argsort(key_ids, axis=1, kind="stable")
    by_key = np.argsort(-np.take_along_axis(key, order, 1), axis=1, kind="stable")
    return np.take_along_axis(order, by_key, 1)


def _kth_largest(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each row of ``a`` (m, c), or -inf where c < k."""
    if a.shape[1] < k:
        return np.full(a.shape[0], -np.inf)
    return -np.partition(-a, k - 1, axis=1)[:, k - 1]


def certified_topk(
    ids: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    upper_out: np.ndarray,
    k: int,
    sims_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    bounds_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The exact top ``k`` of each query, proved from bounded candidates; returns (top, certified, computed).

    Parameters
    ----------
    ids : (m, c) int64, c >= k
        Candidate row ids of each query (-1 = none).
    lo, hi : (m, c) float64
        Bounds on each candidate's reference similarity t: lo <= t <= hi.
    upper_out : (m,) float64
        Bound on the reference similarity of every row that is not a candidate (-inf: none).
    k : int
    sims_of : callable
        ``sims_of(query_index, row_ids)`` (p,) int64 each, grouped by query -> the reference
        similarities (p,) float64 of those pairs (:func:`exact_sims` of the stored vectors).
    bounds_of : callable, optional
        ``bounds_of(query_index, row_ids)`` -> tighter (lo, hi) of those pairs, cheaper than
        ``sims_of`` (a float32 product): asked first for the candidates the bounds leave open.

    Returns
    -------
    top : (m, k) int64
        Where certified, the exact top k (reference similarity descending, id ascending) as a
        set, ordered so that its last entry is the exact k-th; elsewhere -1.
    certified : (m,) bool
        False where a non-candidate might belong to the top k: search again with more.
    computed : int
        Reference similarities computed.

    Notes
    -----
    L, the k-th largest lower bound, is at most the exact k-th similarity, so a row whose
    upper bound is below L is out; all non-candidates are out when ``upper_out < L``. A
    candidate whose lower bound exceeds h, the (k+1)-th largest upper bound (or
    ``upper_out``), has at most k - 1 rows at or above it, so it is in. Only the rest of the
    possible rows need their reference similarity; so do the sure rows that might be the
    exact k-th (lower bound <= the k-th largest upper bound), to put it last.
    """
    valid = ids >= 0
    lo = np.where(valid, lo, -np.inf)
    hi = np.where(valid, hi, -np.inf)
    certified, possible, need = _open(lo, hi, upper_out, k)
    if bounds_of is not None:
        rows, cols = np.nonzero(need)
        if rows.size:
            lo[rows, cols], hi[rows, cols] = bounds_of(rows, ids[rows, cols])
            certified, possible, need = _open(lo, hi, upper_out, k)
    key = np.where(possible, np.inf, -np.inf)
    rows, cols = np.nonzero(need)
    if rows.size:
        key[rows, cols] = sims_of(rows, ids[rows, cols])
    top = np.take_along_axis(ids, order_by_key(key, np.where(possible, ids, -1))[:, :k], 1)
    top[~certified] = -1
    return top, certified, int(rows.size)


def _open(lo: np.ndarray, hi: np.ndarray, upper_out: np.ndarray, k: int):
    """(certified (m,), possible (m, c), need (m, c)): the sets of :func:`certified_topk`'s notes."""
    L = _kth_largest(lo, k)
    certified = (upper_out < L) & np.isfinite(L)
    h = np.maximum(_kth_largest(hi, k + 1), upper_out)
    possible = (hi >= L[:, None]) & certified[:, None]
    sure = possible & (lo > h[:, None])
    maybe_last = lo <= _kth_largest(hi, k)[:, None]
    return certified, possible, possible & (~sure | maybe_last)
