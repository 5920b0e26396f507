"""A sharded index (:class:`nnkcli.shards.Manifest`) searched as the one index it splits.

**Flat shards** are searched like one flat index: each shard file is memory-mapped
(:func:`nnkcli.index.load_index` with ``mapped=True``: the vectors stay in the file's pages,
which the operating system keeps in memory when it can and reads again when it must), and a
block of queries is searched against every shard in row order with one heap per query
(:func:`nnkcli.index_parts.parts_search`). The candidates are then the flat index's, bit for
bit -- its ties included -- and their vectors are gathered from the shards' mappings when
each scoring sub-chunk is re-ranked. So a sharded search is a two-stage, thread-safe searcher
like :class:`~nnkcli.evaluation.search.IndexSearcher`: large search blocks, each reading
every shard once for all its queries, searched on every thread at once.

**hnsw and ivf shards** (approximate: their results are not the unsharded index's anyway) are
loaded one at a time and searched chunk by chunk, each shard's candidates re-ranked and merged
(:func:`~nnkcli.evaluation.search.merge_topk`); consecutive chunks walk the shards in
alternating directions, so the shard loaded last is reused by the next chunk.
"""

from __future__ import annotations

import threading

import numpy as np

from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
from nnkcli.evaluation.search import IndexSearcher, Searcher, drop_own_rows, merge_topk, rerank


class ShardedSearcher(Searcher):
    """Index shards searched as one index: flat ones mapped and searched together, others one after another."""

    def __init__(self, manifest):
        self.manifest = manifest
        self.n = manifest.fingerprint.n
        self.dim = manifest.fingerprint.dim
        self.flat = manifest.params.index_type == "flat"
        # flat shards: the search stage alone, on any thread (the mappings are read-only)
        self.two_stage = self.thread_safe = self.flat
        self.starts = np.array([s["start"] for s in manifest.shards] + [self.n], dtype=np.int64)
        self._mapped: list | None = None  # flat: every shard's NnkIndex (they own the mappings)
        self._parts: list[np.ndarray] = []  # flat: every shard's (rows, d) vectors, in the mapping
        self._mapping_lock = threading.Lock()
        self._loaded: tuple[int, IndexSearcher] | None = None  # hnsw, ivf: the one loaded shard
        self._forward = True
        self.loads = 0  # shard files read or mapped so far
        self.chunk_budget = self._chunk_budget()

    def _chunk_budget(self) -> int:
        """Working memory for a query chunk: a quarter of the largest shard (128 MiB to the usual 512 MiB).

        Sharding is chosen to bound memory, so the chunk is kept small beside one shard.
        """
        from nnkcli.shards import bytes_per_row

        rows = max(s["stop"] - s["start"] for s in self.manifest.shards)
        largest = rows * bytes_per_row(self.dim, self.manifest.params)
        return int(min(CHUNK_MEMORY_BUDGET, max(128 * 2**20, largest // 4)))

    # flat shards: mapped, searched as one index

    def parts(self) -> list[np.ndarray]:
        """Every shard's vectors (rows, d) float32, views of the mapped shard files (mapped on first use)."""
        with self._mapping_lock:
            if self._mapped is None:
                mapped = [self.manifest.load(i, mapped=True) for i in range(self.manifest.n_shards)]
                self.loads += len(mapped)
                self._parts = [m._flat() for m in mapped]
                self._mapped = mapped
        return self._parts

    def search_ids(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> np.ndarray:
        """Candidate ids (B, k) of queries ``q``, global, -1 padded: the flat index's, every shard read once."""
        from nnkcli.index_parts import parts_search

        if not self.flat:
            raise NotImplementedError("hnsw and ivf shards are searched chunk by chunk (neighbors)")
        k_here = min(k + (1 if exclude_self else 0), self.n)
        _, ids = parts_search(self.parts(), np.ascontiguousarray(q, dtype=np.float32), k_here)
        if exclude_self:
            return drop_own_rows(ids, start, k)
        if ids.shape[1] < k:
            ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, dtype=np.int64)], axis=1)
        return ids

    def refine(self, q: np.ndarray, ids: np.ndarray):
        """``search_ids``'s candidates re-ranked exactly (ids, sims, X, missing), vectors from the mappings."""
        return rerank(q, ids, self.vectors)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of global row ``ids`` (any shape, all >= 0): ``ids.shape + (d,)`` float32."""
        parts = self.parts()
        flat = ids.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        if len(parts) == 1:
            out[:] = parts[0][flat]
        else:
            for i in np.unique(shard):
                at = np.flatnonzero(shard == i)
                out[at] = parts[i][flat[at] - self.starts[i]]
        return out.reshape(*ids.shape, self.dim)

    # every index type

    def neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        if self.flat:
            return self.refine(q, self.search_ids(q, start, k, exclude_self))
        order = list(range(self.manifest.n_shards))
        if not self._forward:
            order.reverse()
        self._forward = not self._forward
        best = None
        for i in order:
            found = self._shard(i).candidates(q, start, k, exclude_self)
            best = found if best is None else merge_topk(best, found, k)
        return best

    def _shard(self, i: int) -> IndexSearcher:
        if self._loaded is None or self._loaded[0] != i:
            self._loaded = None  # free the previous shard before reading the next
            searcher = IndexSearcher(self.manifest.load(i), offset=self.manifest.shards[i]["start"])
            self._loaded = (i, searcher)
            self.loads += 1
        return self._loaded[1]

    def close(self) -> None:
        self._loaded = None
        self._parts, self._mapped = [], None
