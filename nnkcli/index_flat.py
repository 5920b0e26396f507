"""Exact inner-product search over a flat (n, d) float32 array, as faiss's ``IndexFlatIP`` does it.

One of the faiss modules of the index (with :mod:`nnkcli.index` and :mod:`nnkcli.index_file`):
:meth:`nnkcli.index.NnkIndex.search` of a flat index runs :func:`flat_search` over
:func:`flat_view` of the index's own memory.
"""

from __future__ import annotations

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
    m, n = int(queries.shape[0]), int(vectors.shape[0])
    sims = np.empty((m, k), dtype=np.float32)
    ids = np.empty((m, k), dtype=np.int64)
    if m == 0:
        return sims, ids
    heaps = faiss.float_minheap_array_t()  # a min-heap per query keeps its k largest
    heaps.nh, heaps.k = m, k
    heaps.val, heaps.ids = faiss.swig_ptr(sims), faiss.swig_ptr(ids)
    heaps.heapify()
    if block_rows is None:
        block_rows = max(FLAT_MIN_ROWS, FLAT_BLOCK_BYTES // (4 * m))
    rows = int(min(max(n, 1), max(1, block_rows)))
    buffer = np.empty(m * rows, dtype=np.float32)
    for j0 in range(0, n, rows):
        block = vectors[j0 : j0 + rows]
        out = buffer[: m * len(block)].reshape(m, len(block))  # contiguous rows, as the heaps read them
        np.matmul(queries, block.T, out=out)
        heaps.addn(len(block), faiss.swig_ptr(out), j0, 0, m)
    heaps.reorder()
    return sims, ids


def flat_view(index) -> np.ndarray | None:
    """Zero-copy (n, d) view of the vectors of a flat (or HNSW-over-flat) index, else None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlat) and index.ntotal > 0:
        # the index owns the memory; the view lives as long as the NnkIndex holding it
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return None
