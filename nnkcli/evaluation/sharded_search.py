"""A sharded index (:class:`nnkcli.shards.Manifest`) searched as the one index it splits.

**Flat shards** give the flat index's results bit for bit. Each shard file is memory-mapped
(:func:`nnkcli.index.load_index` with ``mapped=True``: the vectors stay in the file's pages,
which the operating system keeps in memory when it can and reads again when it must), and a
block of queries is searched against every shard in turn, each read once for all the block's
queries. Each shard's search is the flat index's own certified one
(:func:`nnkcli.index_flat.kernel_search`): its *exact* top k, the k rows of largest float64
similarity, ties by row id. The exact top k of the union is then the best k of the shards'
exact top k by the same rule (float64 similarity, then global row id) -- which does not depend
on the order or the number of shards, so it is the unsharded index's, ties included. The
candidates' vectors are gathered from the mappings when each scoring sub-chunk is re-ranked,
so a sharded search is a two-stage, thread-safe searcher like
:class:`~nnkcli.evaluation.search.IndexSearcher`. With ``--search-kernel bf16`` (or ``auto``)
no bfloat16 copy of a shard is made: each search rounds the shard's rows block by block as it
multiplies them (:class:`nnkcli.index_bf16.Bf16Rows` with ``stream``), so the memory stays the
shards' mappings plus the rows' norms (24 bytes a row) and one block per search.

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

#: bytes of gathered shard rows per step of the merge's float64 similarities
EXACT_BLOCK_BYTES = 64 * 2**20


class ShardedSearcher(Searcher):
    """Index shards searched as one index: flat ones mapped and searched together, others one after another."""

    def __init__(self, manifest, kernel: str = "fp32", threads: int = 1):
        self.manifest = manifest
        self.threads = int(threads)
        self.n = manifest.fingerprint.n
        self.dim = manifest.fingerprint.dim
        self.flat = manifest.params.index_type == "flat"
        # flat shards: the search stage alone, on any thread (the mappings are read-only)
        self.two_stage = self.thread_safe = self.flat
        self.starts = np.array([s["start"] for s in manifest.shards] + [self.n], dtype=np.int64)
        self._mapped: list | None = None  # flat: every shard's NnkIndex (they own the mappings)
        self._parts: list[np.ndarray] = []  # flat: every shard's (rows, d) vectors, in the mapping
        self._rows: list = []  # flat: every shard's KernelRows (its norms, for the certificate; no bf16 copy)
        self.search_kernel = kernel if self.flat else "native"
        self._count = threading.Lock()
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
                from nnkcli.index_flat import KernelRows

                mapped = [self.manifest.load(i, mapped=True) for i in range(self.manifest.n_shards)]
                self.loads += len(mapped)
                self._parts = [m._flat() for m in mapped]
                # bf16: the rows are rounded block by block as each search multiplies them (stream), never copied
                kernel, threads = self.search_kernel, self.threads
                self._rows = [KernelRows(part, kernel, threads, stream=True) for part in self._parts]
                self.search_kernel = self._rows[0].kernel if self._rows else kernel  # fp32 where bf16 cannot run
                self._mapped = mapped
        return self._parts

    def search_ids(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> np.ndarray:
        """Candidate ids (B, k) of queries ``q``, global, -1 padded: the flat index's exact top k (as a set,
        the exact k-th last, what ``drop_own_rows`` drops), every shard read once."""
        if not self.flat:
            raise NotImplementedError("hnsw and ivf shards are searched chunk by chunk (neighbors)")
        k_here = min(k + (1 if exclude_self else 0), self.n)
        ids = self._exact_topk(np.ascontiguousarray(q, dtype=np.float32), k_here)
        if exclude_self:
            return drop_own_rows(ids, start, k)
        if ids.shape[1] < k:
            ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, dtype=np.int64)], axis=1)
        return ids

    def _exact_topk(self, q: np.ndarray, k: int) -> np.ndarray:
        """(m, k) global ids, best first by (float64 similarity, row id): each shard's exact top k, merged."""
        from nnkcli.index_flat import kernel_search
        from nnkcli.numerics.certified import exact_sims

        parts = self.parts()
        m = len(q)
        ids_of, sims_of = [], []
        for i, part in enumerate(parts):
            kk = min(k, len(part))
            if kk < 1 or m == 0:
                continue
            found = kernel_search(part, q, kk, self._rows[i].kernel, rows=self._rows[i])
            if found.fallbacks:
                with self._count:
                    self.search_fallbacks += found.fallbacks
            local = found.ids
            sims = np.empty(local.shape)
            step = max(1, EXACT_BLOCK_BYTES // (4 * kk * self.dim))  # the gathered rows of a few queries at a time
            for a in range(0, m, step):
                sims[a : a + step] = exact_sims(part[local[a : a + step]], q[a : a + step])
            ids_of.append(local + self.starts[i])
            sims_of.append(sims)
        if not ids_of:
            return np.full((m, k), -1, dtype=np.int64)
        ids = np.concatenate(ids_of, axis=1)
        sims = np.concatenate(sims_of, axis=1)
        order = np.lexsort((ids, -sims))[:, :k]  # along each row: similarity descending, then row id
        return np.take_along_axis(ids, order, axis=1)

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
