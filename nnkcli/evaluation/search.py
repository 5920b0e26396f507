"""Searchers: given a block of normalized queries and K, the exact-re-ranked K nearest train rows.

This is the seam between "where the train vectors live" and the scoring code. Every
searcher returns the same thing, so the NNK and k-NN stages never know whether the
neighbors came from one faiss index, from several index shards
(:mod:`nnkcli.evaluation.sharded_search`), or from a torch matmul on a GPU:

``ids``      (B, K) int64    row ids into the train split, most similar first (-1 = missing)
``sims``     (B, K) float64  cosine similarity recomputed exactly from the stored vectors
``X``        (B, K, d) float32 the neighbors' stored (normalized) vectors
``missing``  (B, K) bool     True where an approximate index returned fewer than K

The exact order is similarity descending, then row id ascending. It does not depend
on faiss's blocking, the chunk size, the thread count or the number of shards: a
candidate set is re-ranked in float64 and merged with :func:`merge_topk`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
from nnkcli.numerics.certified import exact_sims


class Searcher:
    """What the scoring code needs from the train side: every capability declared, none probed.

    The base answers ``neighbors`` only. A searcher declares what more it can do with its
    class attributes, and implements the methods those name:

    ``two_stage``   ``search_ids`` (candidate ids of a large block of queries) then ``refine``
                    (their exact re-ranking, sub-chunk by sub-chunk); else the pipeline asks
                    ``neighbors`` chunk by chunk.
    ``on_device``   ``device_neighbors`` hands the neighbors over as :class:`DeviceNeighbors`
                    on a torch device, where the chunk is scored (``labels_on_device``).
    ``thread_safe`` concurrent calls from several threads are safe (else one at a time).
    ``chunk_budget`` the working memory of the query chunks in flight, in bytes.
    ``search_kernel`` the product that found the candidates: ``fp32``/``bf16`` (a flat index's
                    certified search, ``nnkcli.index_kernel.kernel_search``) or ``native`` (the
                    index's own search: IVF, HNSW; the torch backend).
    """

    n: int  # train rows
    dim: int
    two_stage: bool = False
    on_device: bool = False
    thread_safe: bool = False
    chunk_budget: int = CHUNK_MEMORY_BUDGET
    search_kernel: str = "native"
    #: queries the bf16 kernel could not certify, searched again in float32 (so far)
    search_fallbacks: int = 0

    def neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        """(ids, sims, X, missing) for queries ``q`` (B, d) float32, rows ``start..start+B`` of the query split."""
        raise NotImplementedError

    def search_ids(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> np.ndarray:
        """``two_stage``: the search alone, candidate ids (B, k) int64, global, -1 padded."""
        raise NotImplementedError(f"{type(self).__name__} is not a two-stage searcher")

    def refine(self, q: np.ndarray, ids: np.ndarray):
        """``two_stage``: ``search_ids``'s candidates of queries ``q`` re-ranked exactly: (ids, sims, X, missing)."""
        raise NotImplementedError(f"{type(self).__name__} is not a two-stage searcher")

    def device_neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> DeviceNeighbors:
        """``on_device``: ``neighbors`` as :class:`DeviceNeighbors` on the searcher's device."""
        raise NotImplementedError(f"{type(self).__name__} does not search on a device")

    def labels_on_device(self, labels: np.ndarray):
        """``on_device``: the train labels (n,) int64 as a tensor on the searcher's device."""
        raise NotImplementedError(f"{type(self).__name__} does not search on a device")

    def labels_changed(self) -> None:
        """The train labels were replaced (``Evaluation.relabel``): drop any copy of them (``labels_on_device``)."""

    def close(self) -> None:
        """Release what the searcher holds (indexes, device memory)."""


class DeviceNeighbors:
    """The four arrays above as torch tensors on one device (``ids``, ``sims``, ``X``, ``missing``).

    The host form is a plain tuple of numpy arrays; this one comes from an ``on_device``
    searcher (``nnkcli.evaluation.torch_backend``), and needs no torch import here.
    """

    def __init__(self, ids, sims, X, missing):
        self.ids, self.sims, self.X, self.missing = ids, sims, X, missing

    def numpy(self):
        """(ids, sims, X, missing) as numpy arrays, the seam's host form."""
        return tuple(a.cpu().numpy() for a in (self.ids, self.sims, self.X, self.missing))


def drop_own_rows(ids: np.ndarray, start: int, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-out: from candidate ids (B, c) remove each query's own row, keep the best ``k`` (-1 padded).

    Query ``i`` of the block is train row ``start + i`` (the query split is the train split),
    or ``own[i]`` when the queries are other train rows (``--select-on train``'s subset).
    A row without its own id among c = k+1 candidates loses its last (least similar) one.
    """
    own = (np.arange(start, start + len(ids), dtype=np.int64) if own is None else np.asarray(own))[:, None]
    ids = np.where(ids == own, -1, ids)
    ids = np.take_along_axis(ids, np.argsort(ids < 0, axis=1, kind="stable"), 1)[:, :k]
    if ids.shape[1] < k:
        ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, dtype=np.int64)], axis=1)
    return ids


def rank_order(sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row: indices sorting by similarity descending, ties by id ascending (missing ids last)."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.argsort(key_ids, axis=1, kind="stable")
    by_sim = np.argsort(-np.take_along_axis(sims, order, 1), axis=1, kind="stable")
    return np.take_along_axis(order, by_sim, 1)


def rerank(q: np.ndarray, ids: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray]):
    """Exact float64 similarities of candidate ``ids`` (B, c) and their order; returns (ids, sims, X, missing).

    ``vectors(safe_ids)`` returns the stored vectors (B, c, d) float32 of ids (all >= 0).
    """
    missing = ids < 0
    safe_ids = np.where(missing, 0, ids)
    X = vectors(safe_ids)
    sims = exact_sims(X, q)  # the values a kernel's certificate compares against
    sims[missing] = -np.inf
    ids = np.where(missing, -1, ids)
    # faiss's order almost always agrees, so only the rows where it does not are permuted
    order = rank_order(sims, ids)
    moved = np.flatnonzero((order != np.arange(ids.shape[1])).any(axis=1))
    if moved.size:
        o = order[moved]
        take = np.take_along_axis
        ids[moved], sims[moved], missing[moved] = (
            take(ids[moved], o, 1),
            take(sims[moved], o, 1),
            take(missing[moved], o, 1),
        )
        # row by row: take_along_axis over (B, K, d) builds a (B, K, d) index array, and at
        # K = 200, d = 784 (where almost every row moves) cost 0.8 ms a query against 0.05
        for i, row in zip(moved, o, strict=True):
            X[i] = X[i][row]
    return ids, sims, X, missing


def merge_topk(a, b, k: int):
    """Merge two re-ranked candidate sets (ids, sims, X, missing) of the same queries into the best ``k``.

    The result is what re-ranking the union would give: the exact order (similarity
    descending, id ascending) is total, so merging shard by shard in any order gives
    the same top k as one search over all rows.
    """
    ids = np.concatenate([a[0], b[0]], axis=1)
    sims = np.concatenate([a[1], b[1]], axis=1)
    order = rank_order(sims, ids)[:, :k]
    take = np.take_along_axis
    X = np.concatenate([a[2], b[2]], axis=1)
    missing = np.concatenate([a[3], b[3]], axis=1)
    return take(ids, order, 1), take(sims, order, 1), take(X, order[:, :, None], 1), take(missing, order, 1)


class IndexSearcher(Searcher):
    """One faiss index (:class:`nnkcli.index.NnkIndex`) holding every train row.

    A flat index is searched by ``kernel`` (``fp32`` or ``bf16``, resolved by
    :func:`nnkcli.index_flat.resolve_kernel`): :func:`nnkcli.index_kernel.kernel_search` returns
    the exact top k (float64 similarity, ties by row id) whichever kernel runs. IVF and HNSW
    indexes are searched by faiss (``search_kernel`` "native").
    """

    #: concurrent searches from several threads are safe (faiss's search is read-only)
    thread_safe = True
    two_stage = True

    def __init__(self, nnk_index, offset: int = 0, kernel: str = "fp32", threads: int = 1):
        from nnkcli.index_kernel import KernelRows

        self.index = nnk_index
        self.offset = int(offset)  # global row id of the index's row 0 (a shard's first row)
        self.n = nnk_index.n
        self.dim = nnk_index.dim
        flat = nnk_index._flat() if nnk_index.params.index_type == "flat" else None
        # made here, by the main thread (the bf16 copy imports torch), and read by the workers
        self._rows = KernelRows(flat, kernel, threads) if flat is not None else None
        self.search_kernel = self._rows.kernel if self._rows is not None else "native"
        self._count = threading.Lock()

    def search_ids(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> np.ndarray:
        """The search stage alone: candidate ids (B, k), global, -1 padded; no vectors gathered.

        With ``refine`` this splits ``candidates`` in two, so that a large block of
        queries can be searched at once and re-ranked in smaller sub-chunks. A flat index's
        ids are the exact top k as a set, the exact k-th last (what ``drop_own_rows`` drops).
        """
        k_here = min(k + (1 if exclude_self else 0), self.n)
        if self._rows is not None and k_here >= 1:
            from nnkcli.index_kernel import kernel_search

            found = kernel_search(self._rows.vectors, q, k_here, self.search_kernel, rows=self._rows)
            if found.fallbacks:
                with self._count:
                    self.search_fallbacks += found.fallbacks
            local = found.ids
        else:
            _, local = self.index.search(q, k_here)
        ids = np.where(local < 0, -1, local + self.offset)
        if exclude_self:
            ids = drop_own_rows(ids, start, k)
        elif ids.shape[1] < k:
            ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, dtype=np.int64)], axis=1)
        return ids

    def refine(self, q: np.ndarray, ids: np.ndarray):
        """Re-rank ``search_ids``'s candidates of queries ``q`` exactly: (ids, sims, X, missing)."""
        return rerank(q, ids, self._vectors)

    def candidates(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        """Exact-re-ranked top ``k`` of this index (ids global, -1 padded when it holds fewer rows)."""
        return self.refine(q, self.search_ids(q, start, k, exclude_self))

    def _vectors(self, global_ids: np.ndarray) -> np.ndarray:
        if not self.offset:
            return self.index.vectors(global_ids)
        # missing candidates arrive as id 0, which may lie outside this shard: any local row will do
        return self.index.vectors(np.clip(global_ids - self.offset, 0, self.n - 1))

    def neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        return self.candidates(q, start, k, exclude_self)

    def close(self) -> None:
        self.index = None
