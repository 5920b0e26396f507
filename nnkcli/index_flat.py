"""Exact inner-product search over a flat (n, d) float32 array, as faiss's ``IndexFlatIP`` does it.

One of the faiss modules of the index (with :mod:`nnkcli.index` and :mod:`nnkcli.index_file`):
:meth:`nnkcli.index.NnkIndex.search` of a flat index runs :func:`flat_search` over
:func:`flat_view` of the index's own memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

#: bytes of the similarity block of one flat search (faiss's own blocking holds 4,096 x 1,024 float32)
FLAT_BLOCK_BYTES = 16 * 2**20
#: the fewest train rows of a block (a thin product runs far from the machine's peak)
FLAT_MIN_ROWS = 256


def flat_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive inner-product top ``k`` of ``queries`` (m, d) among ``vectors`` (n, d), both float32.

    What ``IndexFlatIP.search`` returns (sims descending, ids -1 where n < k), computed
    as faiss computes it -- similarities of a block of train rows at a time by a matrix
    product, each query's best k kept in a heap (faiss's ``float_minheap_array_t``, so a
    tie with the k-th kept value leaves the earlier row in) -- except that the product is
    numpy's. numpy's BLAS is the one ``--threads`` caps and the one a user tunes; the
    OpenBLAS bundled in faiss's wheels is older, and on processors it does not know it
    falls back to a generic kernel: on a 5th-generation Xeon (CPU model 207) faiss's
    search of Fashion-MNIST ran at 30 GFLOP/s on one thread, numpy's product at 100-140.

    The train rows are taken ``block_rows`` at a time, by default ``FLAT_BLOCK_BYTES`` of
    similarities (at least ``FLAT_MIN_ROWS`` rows), so the extra memory is one block, as in
    faiss; the result does not depend on the block size.
    """

    def product(j0: int, j1: int, out: np.ndarray) -> None:
        np.matmul(queries, vectors[j0:j1].T, out=out)

    return heap_topk(int(queries.shape[0]), int(vectors.shape[0]), k, product, block_rows=block_rows)


def heap_topk(
    m: int, n: int, k: int, product: Callable[[int, int, np.ndarray], None], *, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of m queries among n rows, from ``product(j0, j1, out)`` filling ``out`` (m, j1 - j0) float32.

    Returns (sims (m, k) float32 descending, ids (m, k) int64, -1 where n < k); see :func:`flat_search`.
    """
    sims = np.empty((m, k), dtype=np.float32)
    ids = np.empty((m, k), dtype=np.int64)
    if m == 0:
        return sims, ids
    heaps = faiss.float_minheap_array_t()  # a min-heap per query keeps its k largest
    heaps.nh, heaps.k = m, k
    heaps.val, heaps.ids = faiss.swig_ptr(sims), faiss.swig_ptr(ids)
    heaps.heapify()
    rows = _block_rows(m, n, block_rows)
    buffer = np.empty(m * rows, dtype=np.float32)
    for j0 in range(0, n, rows):
        j1 = min(n, j0 + rows)
        out = buffer[: m * (j1 - j0)].reshape(m, j1 - j0)  # contiguous rows, as the heaps read them
        product(j0, j1, out)
        heaps.addn(j1 - j0, faiss.swig_ptr(out), j0, 0, m)
    heaps.reorder()
    return sims, ids


def _block_rows(m: int, n: int, block_rows: int | None) -> int:
    if block_rows is None:
        block_rows = max(FLAT_MIN_ROWS, FLAT_BLOCK_BYTES // (4 * max(m, 1)))
    return int(min(max(n, 1), max(1, block_rows)))


def flat_view(index) -> np.ndarray | None:
    """Zero-copy (n, d) view of the vectors of a flat (or HNSW-over-flat) index, else None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlat) and index.ntotal > 0:
        # the index owns the memory; the view lives as long as the NnkIndex holding it
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return None


#: what ``auto`` runs (see :func:`resolve_kernel`)
AUTO_KERNEL = "fp32"
#: candidates the float32 kernel keeps beyond k: its rounding (~1e-5 at d = 784) leaves few rows that close
FP32_EXTRA = 8
#: the bfloat16 kernel keeps BF16_FACTOR * k + BF16_EXTRA candidates: its bound is ~2^-7 for unit vectors
BF16_FACTOR, BF16_EXTRA = 4, 256
#: rows of the bfloat16 product per step: oneDNN's rate grows with the block up to ~16k rows
BF16_BLOCK_BYTES = 64 * 2**20
#: queries whose bounds are certified at once (the bfloat16 kernel's (queries, 4k + 256) float64 arrays)
CERTIFY_ROWS = 256
#: query/row pairs whose float64 similarity is computed at once (bounds the gathered vectors)
PAIR_BLOCK = 8192


def resolve_kernel(kernel: str) -> str:
    """The kernel that runs for ``kernel``: ``fp32`` or ``bf16``; ``auto`` is ``fp32`` (``AUTO_KERNEL``).

    ``auto`` stays ``fp32`` until ``bf16`` is faster end to end: on the one bfloat16 CPU
    measured (a 2-core Xeon with AMX), its product ran at 3-4x float32's rate, but the check of
    its candidates cost about as much as it saved on Fashion-MNIST's dense neighborhoods
    (``benchmarks/bench_search_kernel.py``). ``auto`` never imports torch. Call this from the
    main thread: ``bf16`` imports torch.

    Raises
    ------
    InputError
        ``bf16`` where this machine cannot run it (exit 1, as ``--device cuda`` without a GPU).
    """
    from nnkcli.errors import InputError
    from nnkcli.index_bf16 import bf16_unavailable
    from nnkcli.numerics.certified import SEARCH_KERNELS

    if kernel not in SEARCH_KERNELS:
        raise InputError(f"unknown search kernel {kernel!r}", hint=f"choose {', '.join(SEARCH_KERNELS)}")
    if kernel == "auto":
        kernel = AUTO_KERNEL
    if kernel == "fp32":
        return kernel
    why = bf16_unavailable()
    if why is None:
        return "bf16"
    if kernel == "bf16":
        raise InputError(f"--search-kernel bf16 cannot run here: {why}", hint="use --search-kernel auto or fp32")
    return "fp32"


class KernelRows:
    """What a kernel keeps of the rows of one flat index between searches: their largest norm, the bfloat16 copy.

    Made by the main thread (the bfloat16 copy imports torch); read by any thread.
    """

    def __init__(self, vectors: np.ndarray, kernel: str):
        from nnkcli.numerics.certified import row_norms

        self.vectors = vectors
        self.kernel = kernel
        self.max_norm = float(row_norms(vectors).max()) if len(vectors) else 0.0
        self.bf16 = None
        if kernel == "bf16":
            from nnkcli.index_bf16 import Bf16Rows

            self.bf16 = Bf16Rows(vectors)


@dataclass
class KernelResult:
    """A certified search: ``ids`` (m, k) int64, the exact top k of each query as a set, its exact k-th last.

    ``fallbacks``: queries the bfloat16 kernel could not certify, searched again in float32;
    ``widened``: searches repeated with more candidates; ``computed``: float64 similarities computed.
    """

    ids: np.ndarray
    kernel: str
    fallbacks: int = 0
    widened: int = 0
    computed: int = 0


def kernel_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, kernel: str = "fp32", *, rows: KernelRows | None = None
) -> KernelResult:
    """The exact top ``k`` of ``queries`` (m, d) among ``vectors`` (n, d), both float32, k <= n.

    *Exact*: the k rows of largest float64 similarity (:func:`nnkcli.numerics.certified.exact_sims`),
    ties by row id -- whichever kernel finds them, for any block of queries. ``fp32``: the
    float32 product with a few extra candidates, proved by its rounding bound; a query it cannot
    prove is searched again with four times as many. ``bf16`` (a resolved kernel,
    :func:`resolve_kernel`): the bfloat16 product keeps ``BF16_FACTOR k + BF16_EXTRA``
    candidates, proved by its bound; a query it cannot prove falls back to ``fp32``.
    ``rows``: the :class:`KernelRows` of ``vectors``, kept by the caller between searches.
    """
    m, n = int(queries.shape[0]), int(vectors.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"kernel_search needs 1 <= k <= n (k={k}, n={n})")
    if rows is None:
        rows = KernelRows(vectors, kernel)
    result = KernelResult(np.full((m, k), -1, dtype=np.int64), kernel)
    todo = np.arange(m)
    if kernel == "bf16" and m:
        if rows.bf16 is None:
            raise ValueError("kernel_search: bf16 needs KernelRows made for bf16")
        top, ok, result.computed = _bf16_round(vectors, queries, k, rows.bf16)
        result.ids[ok] = top[ok]
        todo = np.flatnonzero(~ok)
        result.fallbacks = int(todo.size)
    c = min(n, k + FP32_EXTRA + k // 16)
    while todo.size:
        q = queries[todo]
        top, ok, computed = _fp32_round(vectors, q, k, c, rows.max_norm)
        result.computed += computed
        result.ids[todo[ok]] = top[ok]
        todo = todo[~ok]
        if todo.size:
            result.widened += int(todo.size)
            c = min(n, 4 * c)
    return result


def _pairs(vectors: np.ndarray, queries: np.ndarray, product: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """``f(query_index, row_ids)`` -> ``product(X, q)`` of those pairs, (p,); the pairs come grouped by query.

    Each query's rows are gathered into one padded (B, c, d) block, about PAIR_BLOCK pairs (padding
    included) at a time, and ``product(X (B, c, d), q (B, d)) -> (B, c)`` applied to it.
    """

    def f(qi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.empty(len(ids))
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
        counts = np.diff(np.r_[starts, len(qi)])
        g0 = 0
        while g0 < len(starts):
            # queries while the padded block stays within PAIR_BLOCK pairs (at least one query)
            widths = np.maximum.accumulate(counts[g0:])
            g1 = g0 + max(1, int(np.searchsorted(widths * np.arange(1, len(widths) + 1), PAIR_BLOCK, "right")))
            s, c = starts[g0:g1], counts[g0:g1]
            col = np.arange(int(c.max()))
            pos = np.minimum(col[None, :], c[:, None] - 1) + s[:, None]  # padded with each query's last pair
            values = product(vectors[ids[pos]], queries[qi[s]])
            keep = col[None, :] < c[:, None]
            out[pos[keep]] = values[keep]
            g0 = g1
        return out

    return f


def _float32_sims(X: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.matmul(X, q[:, :, None])[:, :, 0]


def _fp32_bounds_of(vectors: np.ndarray, queries: np.ndarray, max_norm: float):
    """``bounds_of`` for :func:`certified_topk`: float32 products of the gathered pairs, +/- their bound."""
    from nnkcli.numerics.certified import fp32_bound, interval, row_norms

    q_norm = row_norms(queries)
    sims = _pairs(vectors, queries, _float32_sims)

    def bounds_of(qi: np.ndarray, ids: np.ndarray):
        return interval(sims(qi, ids), fp32_bound(vectors.shape[1], q_norm[qi], max_norm))

    return bounds_of


def _sims_of(vectors: np.ndarray, queries: np.ndarray):
    from nnkcli.numerics.certified import exact_sims

    return _pairs(vectors, queries, exact_sims)


def _fp32_round(vectors, queries, k: int, c: int, max_norm: float):
    from nnkcli.numerics.certified import certified_topk, fp32_bound, interval, row_norms

    n, d = vectors.shape
    v, ids = flat_search(vectors, queries, c)
    v = v.astype(np.float64)
    delta = fp32_bound(d, row_norms(queries), max_norm)[:, None]
    lo, hi = interval(v, delta)
    upper_out = interval(v[:, -1:], delta)[1][:, 0] if c < n else np.full(len(v), -np.inf)
    return certified_topk(ids, lo, hi, upper_out, k, _sims_of(vectors, queries))


def _bf16_round(vectors, queries, k: int, rows):
    from nnkcli.index_bf16 import Bf16Product, Bf16Queries

    m, n = len(queries), len(vectors)
    c = min(n, BF16_FACTOR * k + BF16_EXTRA)
    q = Bf16Queries(queries, rows)
    block = _block_rows(m, n, max(FLAT_MIN_ROWS, BF16_BLOCK_BYTES // (6 * m)))
    b, ids = heap_topk(m, n, c, Bf16Product(rows, q, block), block_rows=block)
    x_max = (rows.low_norm.max(), rows.res_norm.max(), rows.norm.max())
    top, ok, computed = np.empty((m, k), dtype=np.int64), np.empty(m, dtype=bool), 0
    # the bounds are (m, c) float64 arrays, c = 4k + 256: made CERTIFY_ROWS queries at a time
    for i0 in range(0, m, CERTIFY_ROWS):
        i = slice(i0, i0 + CERTIFY_ROWS)
        top[i], ok[i], done = _bf16_certify(vectors, queries[i], q, i, b[i], ids[i], k, c < n, rows, x_max)
        computed += done
    return top, ok, computed


def _bf16_certify(vectors, queries, q, i: slice, b, ids, k: int, others: bool, rows, x_max):
    """:func:`certified_topk` of a slice ``i`` of the queries from their bfloat16 candidates."""
    from nnkcli.numerics.certified import bf16_bound, certified_topk, interval

    d = vectors.shape[1]
    b = b.astype(np.float64)
    qn = (q.low_norm[i, None], q.res_norm[i, None])
    safe = np.maximum(ids, 0)
    err = bf16_bound(d, b, *qn, rows.low_norm[safe], rows.res_norm[safe], rows.norm[safe], q.norm[i, None])
    lo, hi = interval(b, err)
    upper_out = np.full(len(b), -np.inf)
    if others:
        last = b[:, -1:]
        x_low, x_res, x_norm = x_max
        upper_out = interval(last, bf16_bound(d, last, *qn, x_low, x_res, x_norm, q.norm[i, None]))[1][:, 0]
    bounds_of = _fp32_bounds_of(vectors, queries, float(x_max[2]))
    return certified_topk(ids, lo, hi, upper_out, k, _sims_of(vectors, queries), bounds_of)
