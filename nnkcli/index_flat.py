"""Exact inner-product search over a flat (n, d) float32 array, as faiss's ``IndexFlatIP`` does it.

One of the faiss modules of the index (with :mod:`nnkcli.index` and :mod:`nnkcli.index_file`):
:meth:`nnkcli.index.NnkIndex.search` of a flat index runs :func:`flat_search` over
:func:`flat_view` of the index's own memory.
"""

from __future__ import annotations

from collections.abc import Callable

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
    similarities and of rows (at least ``FLAT_MIN_ROWS``), so the extra memory is one block, as
    in faiss; the result does not depend on the block size.
    """

    def product(j0: int, j1: int, out: np.ndarray) -> None:
        np.matmul(queries, vectors[j0:j1].T, out=out)

    # rows at most FLAT_BLOCK_BYTES too (a slice of a sharded index's rows spanning shards is a copy)
    m, d = int(queries.shape[0]), int(vectors.shape[1])
    block_rows = block_rows or max(FLAT_MIN_ROWS, FLAT_BLOCK_BYTES // (4 * max(m, d, 1)))
    return heap_topk(m, int(vectors.shape[0]), k, product, block_rows=block_rows)


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
    rows = clamp_block_rows(m, n, block_rows)
    buffer = np.empty(m * rows, dtype=np.float32)
    for j0 in range(0, n, rows):
        j1 = min(n, j0 + rows)
        out = buffer[: m * (j1 - j0)].reshape(m, j1 - j0)  # contiguous rows, as the heaps read them
        product(j0, j1, out)
        heaps.addn(j1 - j0, faiss.swig_ptr(out), j0, 0, m)
    heaps.reorder()
    return sims, ids


def clamp_block_rows(m: int, n: int, block_rows: int | None) -> int:
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


#: ``auto`` runs bf16 (where it can) for a search of at least this many multiply-adds per thread (queries x rows
#: x d / threads), by the library that would run (:func:`nnkcli.index_bf16.likely_library`). oneMKL's fixed cost
#: is rounding the rows (~2.5 ns a value a thread): 2e10 is ~0.3 s of float32 product a thread. torch's import
#: costs ~1 s: 3e11 is ~4 s of float32 product a thread, of which bf16 saves ~2 s
AUTO_BF16_WORK = {"mkl": 2 * 10**10, "torch": 3 * 10**11}


def resolve_kernel(kernel: str, work: int | None = None) -> str:
    """The kernel that runs for ``kernel``: ``fp32`` or ``bf16``.

    ``auto`` is ``bf16`` where this machine likely can run it (a CPU with bfloat16 instructions,
    oneMKL or torch installed) and the search is large: ``work``, its queries x rows x dimension
    per thread, at least ``AUTO_BF16_WORK`` of the library that would run; else ``fp32``. Below
    that, loading the library and rounding the rows would cost more than the faster product
    saves; ``work=None`` (not known yet) gives ``fp32``. ``auto`` loads nothing here (the
    library's own check runs in :class:`KernelRows`, which falls back to fp32 where it fails).
    An explicit ``bf16`` is checked in full: call this from the main thread.

    Raises
    ------
    InputError
        ``bf16`` where this machine cannot run it (exit 1, as ``--device cuda`` without a GPU).
    """
    from nnkcli.errors import InputError
    from nnkcli.index_bf16 import bf16_unavailable, bf16_unlikely
    from nnkcli.numerics.certified import SEARCH_KERNELS

    if kernel not in SEARCH_KERNELS:
        raise InputError(f"unknown search kernel {kernel!r}", hint=f"choose {', '.join(SEARCH_KERNELS)}")
    if kernel == "auto":
        return "bf16" if _large(work) and bf16_unlikely() is None else "fp32"
    if kernel == "fp32":
        return kernel
    why = bf16_unavailable()
    if why is not None:
        raise InputError(f"--search-kernel bf16 cannot run here: {why}", hint="use --search-kernel auto or fp32")
    return "bf16"


def prefetch_kernel(kernel: str, work: int | None) -> None:
    """Start importing torch in the background where :func:`resolve_kernel` ``(kernel, work)`` may pick ``bf16``
    from torch (oneMKL needs no head start)."""
    if kernel == "bf16" or (kernel == "auto" and _large(work)):
        from nnkcli.index_bf16 import prefetch_torch

        prefetch_torch()


def _large(work: int | None) -> bool:
    """Whether a search of ``work`` multiply-adds per thread is worth ``auto``'s bf16 (``AUTO_BF16_WORK``)."""
    from nnkcli.index_bf16 import likely_library

    if work is None:
        return False
    library = likely_library()
    return library is not None and work >= AUTO_BF16_WORK[library]


def _pairs(vectors: np.ndarray, queries: np.ndarray, product: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """``f(query_index, row_ids)`` -> ``product(X, q)`` of those pairs, (p,); the pairs come grouped by query.

    One query at a time: ``product(X (1, c, d), q (1, d)) -> (1, c)`` applied to its rows. The
    rows of consecutive queries are gathered together, 4 MiB at a time (one gather from several
    mapped shards costs more than a plain one), and stay in the cache; one gather of every pair of
    a block of queries (a padded (B, c, d) array) ran 2.5x slower on Fashion-MNIST's 784-d rows.
    """

    def f(qi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.empty(len(ids))
        if not len(ids):
            return out
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
        ends = np.r_[starts[1:], len(qi)]
        step, X, base = max(1, 2**22 // (4 * max(1, vectors.shape[1]))), vectors[:0], 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if e > base + len(X):  # the rows of the next pairs, 4 MiB of them (at least this query's), gathered at once
                base, X = s, vectors[ids[s : max(e, s + step)]]
            out[s:e] = product(X[s - base : e - base][None], queries[qi[s] : qi[s] + 1])[0]
        return out

    return f


def _float32_sims(X: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.matmul(X, q[:, :, None])[:, :, 0]


def fp32_bounds_of(vectors: np.ndarray, queries: np.ndarray, max_norm: float):
    """``bounds_of`` for :func:`certified_topk`: float32 products of the gathered pairs, +/- their bound."""
    from nnkcli.numerics.certified import fp32_bound, interval, row_norms

    q_norm = row_norms(queries)
    sims = _pairs(vectors, queries, _float32_sims)

    def bounds_of(qi: np.ndarray, ids: np.ndarray):
        return interval(sims(qi, ids), fp32_bound(vectors.shape[1], q_norm[qi], max_norm))

    return bounds_of


def sims_of(vectors: np.ndarray, queries: np.ndarray):
    from nnkcli.numerics.certified import exact_sims

    return _pairs(vectors, queries, exact_sims)


def fp32_round(vectors, queries, k: int, c: int, max_norm: float):
    from nnkcli.numerics.certified import certified_topk, fp32_bound, interval, row_norms

    n, d = vectors.shape
    v, ids = flat_search(vectors, queries, c)
    v = v.astype(np.float64)
    delta = fp32_bound(d, row_norms(queries), max_norm)[:, None]
    lo, hi = interval(v, delta)
    upper_out = interval(v[:, -1:], delta)[1][:, 0] if c < n else np.full(len(v), -np.inf)
    return certified_topk(ids, lo, hi, upper_out, k, sims_of(vectors, queries))
