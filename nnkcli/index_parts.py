"""Exact flat search over rows held in several arrays: ``flat_search`` over their concatenation, bit for bit.

One of the faiss modules of the index (with :mod:`nnkcli.index`, :mod:`nnkcli.index_file`
and :mod:`nnkcli.index_flat`). A sharded flat index holds its rows in one array per shard;
:func:`parts_search` returns, bit for bit, what the flat search of one index over all of
them returns. Merging each shard's own top k cannot do that, for two reasons:

- **Ties.** faiss's heap keeps, of the rows tied with the k-th value, not simply the earliest:
  a row enters only above the heap's smallest value, and a larger row evicts the tied row of
  smallest id. Of rows 0..3 with similarities (0.5, 0.5, 0.5, 0.9) at k = 2 it keeps rows 1
  and 3, which depends on the order the rows arrive in, not only on their values. So the heap
  of each query is kept across the parts and fed every row in row order, as the flat search does.
- **Rounding.** Each similarity must come from the same float32 arithmetic: the rows are taken
  in the flat search's blocks (counted from row 0, whatever the parts), and a block is one
  matrix product (a one-row product runs BLAS's matrix-vector kernel, whose rounding differs
  from the matrix-matrix one). A block that spans two parts, or lies in a part whose memory is
  not float32-aligned (a memory-mapped file), is copied into one buffer first.

The parts are read in row order once per call: searching a large block of queries at once
reads each part once for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from nnkcli.index_flat import FLAT_BLOCK_BYTES, FLAT_MIN_ROWS

#: the most bytes of vectors copied into one buffer: a block that needs a copy (it spans two
#: parts, or its part is not float32-aligned) and fits is one matrix product, as in the flat
#: search; a larger one (fewer than ~64 queries against tens of thousands of rows) is
#: multiplied part by part, whose similarities can differ from the flat search's in the last bit
COPY_BYTES = 64 * 2**20


def parts_search(parts: Sequence[np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive inner-product top ``k`` of ``queries`` (m, d) among the rows of ``parts`` taken in order.

    ``parts``: arrays (n_i, d) float32, C-contiguous (any alignment); row ``j`` of part ``p``
    is row ``sum(n_0..n_{p-1}) + j`` of the result's ids. Returns (sims (m, k) float32
    descending, ids (m, k) int64, -1 where fewer than k rows), equal to ``flat_search`` over
    ``np.concatenate(parts)`` (bit for bit, see ``COPY_BYTES``).
    """
    m = int(queries.shape[0])
    sizes = [int(len(p)) for p in parts]
    n = sum(sizes)
    sims = np.empty((m, k), dtype=np.float32)
    ids = np.empty((m, k), dtype=np.int64)
    if m == 0:
        return sims, ids
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = m, k
    heaps.val, heaps.ids = faiss.swig_ptr(sims), faiss.swig_ptr(ids)
    heaps.heapify()
    # the flat search's blocks, exactly (flat_search's defaults)
    rows = int(min(max(n, 1), max(1, max(FLAT_MIN_ROWS, FLAT_BLOCK_BYTES // (4 * m)))))
    dim = int(queries.shape[1])
    starts = np.cumsum([0, *sizes])
    copy_rows = max(2, COPY_BYTES // max(4 * dim, 1))
    copy = np.empty((min(rows, copy_rows), dim), dtype=np.float32)
    buffer = np.empty(m * rows, dtype=np.float32)
    for j0 in range(0, n, rows):
        j1 = min(n, j0 + rows)
        for p0, p1, block in _blocks(parts, starts, j0, j1, copy):
            out = buffer[: m * (p1 - p0)].reshape(m, p1 - p0)  # contiguous rows, as the heaps read them
            np.matmul(queries, block.T, out=out)
            heaps.addn(p1 - p0, faiss.swig_ptr(out), p0, 0, m)
    heaps.reorder()
    return sims, ids


def _blocks(parts: Sequence[np.ndarray], starts: np.ndarray, j0: int, j1: int, copy: np.ndarray):
    """Rows ``j0:j1`` of the parts taken in order, as ``(first, stop, rows)``: one piece unless it cannot be.

    One piece: a view where one aligned part holds the rows, else a copy when it fits ``copy``.
    Otherwise one piece per part (views, or copies of at most ``len(copy)`` rows).
    """
    p = int(np.searchsorted(starts, j0, side="right")) - 1
    if j1 <= starts[p + 1] and parts[p].flags.aligned:
        yield j0, j1, parts[p][j0 - starts[p] : j1 - starts[p]]
        return
    if j1 - j0 <= len(copy):
        out = copy[: j1 - j0]
        at = j0
        while at < j1:
            stop = min(j1, int(starts[p + 1]))
            out[at - j0 : stop - j0] = parts[p][at - starts[p] : stop - starts[p]]
            at, p = stop, p + 1
        yield j0, j1, out
        return
    at = j0
    while at < j1:
        stop = min(j1, int(starts[p + 1]))
        part = parts[p][at - starts[p] : stop - starts[p]]
        if part.flags.aligned:
            yield at, stop, part
        else:
            count = -(-len(part) // len(copy))
            size = -(-len(part) // count)
            for a in range(0, len(part), size):
                piece = copy[: min(size, len(part) - a)]
                piece[:] = part[a : a + size]
                yield at + a, at + a + len(piece), piece
        at, p = stop, p + 1
