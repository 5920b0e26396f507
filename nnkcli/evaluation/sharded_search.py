"""A sharded index (:class:`nnkcli.shards.Manifest`) searched as the one index it splits.

**Flat shards** give the flat index's results bit for bit, at the flat index's speed. Each shard
file is memory-mapped (:func:`nnkcli.index.load_index` with ``mapped=True``: the vectors stay in
the file's pages, which the operating system keeps in memory when it can and reads again when it
must), and the shards' rows are taken as one array (:class:`nnkcli.storage.concat_rows.ConcatRows`:
slices and gathers read the mappings; nothing is copied whole). A block of queries is then searched by the flat index's
own certified search (:func:`nnkcli.index_kernel.kernel_search`) over that array: its *exact* top
k, the k rows of largest float64 similarity, ties by (global) row id -- the unsharded index's.
With ``--search-kernel bf16`` (or ``auto``) no bfloat16 copy is made: the search rounds the rows
block by block as it multiplies them (:class:`nnkcli.index_bf16.Bf16Rows` with ``stream``), so the
memory is the mappings, the rows' norms (24 bytes a row) and one block per search. The
candidates' vectors are gathered from the mappings when each scoring sub-chunk is re-ranked, so a
sharded search is a two-stage, thread-safe searcher like
:class:`~nnkcli.evaluation.search.IndexSearcher`.

**hnsw and ivf shards** (approximate: their results are not the unsharded index's anyway) are
loaded one at a time and searched chunk by chunk, each shard's candidates re-ranked and merged
(:func:`~nnkcli.evaluation.search.merge_topk`); consecutive chunks walk the shards in
alternating directions, so the shard loaded last is reused by the next chunk.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
from nnkcli.evaluation.search import IndexSearcher, Searcher, drop_own_rows, merge_topk, rerank
from nnkcli.storage.concat_rows import ConcatRows


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
        self._mapped: list | None = None  # flat: every shard's NnkIndex (they own the mappings)
        # flat: the shards' rows as one array (no copy; the search reads it as an ndarray), and its KernelRows (the
        # norms for the certificate; no bf16 copy)
        self._concat: Any = None
        self._rows: Any = None
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

    def _prepare(self) -> None:
        """Map every shard file (on first use) and take their rows as one array, with its KernelRows."""
        with self._mapping_lock:
            if self._mapped is None:
                from nnkcli.index_kernel import KernelRows

                mapped = [self.manifest.load(i, mapped=True) for i in range(self.manifest.n_shards)]
                self.loads += len(mapped)
                self._concat = ConcatRows([m._flat() for m in mapped])  # every shard's rows, in its mapping
                # bf16: no copy of a shard; the rows are rounded block by block as each search multiplies them
                self._rows = KernelRows(self._concat, self.search_kernel, self.threads, stream=True)
                self.search_kernel = self._rows.kernel  # fp32 where bf16 cannot run here
                self._mapped = mapped

    def search_ids(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> np.ndarray:
        """Candidate ids (B, k) of queries ``q``, global, -1 padded: the flat index's exact top k (as a set,
        the exact k-th last, what ``drop_own_rows`` drops), every shard read once."""
        if not self.flat:
            raise NotImplementedError("hnsw and ivf shards are searched chunk by chunk (neighbors)")
        from nnkcli.index_kernel import kernel_search

        self._prepare()
        k_here = min(k + (1 if exclude_self else 0), self.n)
        q = np.ascontiguousarray(q, dtype=np.float32)
        # one certified search over the shards' rows taken as one array: the flat index's, ties and all
        found = kernel_search(self._concat, q, k_here, self._rows.kernel, rows=self._rows)
        if found.fallbacks:
            with self._count:
                self.search_fallbacks += found.fallbacks
        ids = found.ids
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
        self._prepare()
        return self._concat.take(ids)

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
        self._mapped, self._concat, self._rows = None, None, None
