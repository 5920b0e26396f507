"""Streaming NNK / weighted-kNN evaluation of a query split against an indexed training split.

The query split is read and searched in blocks (``nnkcli.evaluation.pipeline``: one
index search per block at the largest k needed, thousands of queries at once), and
each block is scored in chunks: an exact re-ranking of the neighbors (float64 cosine
from the stored vectors, ties broken by row id, so results do not depend on faiss's
blocking, the chunk size or the thread count), then the requested methods at every
requested k. Blocks and chunks run on ``--threads`` worker threads.
``classify`` evaluates one k; ``nnkcli.evaluation.sweeps`` evaluates many from the same search.

Memory: the index (n_train x d float32 for a flat index) plus, per chunk of B
queries at largest k K, about ``B * (4*K*d + 32*K*K + 16*C)`` bytes (neighbor
vectors, kernel blocks and solver work, class scores), for each of the chunks in
flight (one per thread), plus the search blocks in flight (one per thread, at least two:
their queries and ids, within ``SEARCH_IDS_BUDGET`` together). The default chunk size keeps the
chunks together under ``CHUNK_MEMORY_BUDGET``; where every method costs the same per
query whatever the chunk (k-NN, NNK on the compiled engine) the chunk is smaller still,
~8 MiB of neighbor vectors (``query_by_query_chunk``). Nothing of size n_query x n_train
is ever held.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.options import (CHUNK_MEMORY_BUDGET, DataOptions, ScoringOptions, check_shard_output,
                                      resolve_one_k)
from nnkcli.numerics import compiled
from nnkcli.numerics.metrics import Accumulator
from nnkcli.numerics.scores import TOP

logger = logging.getLogger("nnkcli")

#: the search blocks in flight (one per thread, at least two) hold their ids, distances and
#: queries within this together (a 4,096-query block needs ~16 MiB at k = 200, d = 384)
SEARCH_IDS_BUDGET = 128 * 2**20
#: neighbor-vector bytes of one scoring chunk where the scoring costs the same per query
#: whatever the chunk (see ``query_by_query_chunk``), and the fewest queries of such a chunk
QUERY_BY_QUERY_CHUNK_BYTES = 8 * 2**20
QUERY_BY_QUERY_MIN_CHUNK = 16
#: the largest floor (a 20-k sweep at k = 200, d = 784 ran 17 % slower with 16-query chunks, and as
#: fast with 64 as with 111)
QUERY_BY_QUERY_MAX_FLOOR = 64


def query_bytes(k: int, dim: int, n_classes: int) -> int:
    """Working memory of one query at k neighbors (see the module docstring), in bytes."""
    return 4 * k * dim + 32 * k * k + 16 * max(n_classes, 1) + 64 * k


def default_chunk_size(k: int, dim: int, n_classes: int, budget: int | None = None) -> int:
    """Queries per chunk so that a chunk stays within ``budget`` (default ``CHUNK_MEMORY_BUDGET``) for any k.

    Goes down to one query per chunk; when one query alone needs more than the budget
    (k near 10,000 needs ~3 GiB for its k x k kernel block) it is an InputError saying
    how much, rather than a silent allocation far past the budget.
    """
    budget = CHUNK_MEMORY_BUDGET if budget is None else budget
    per_query = query_bytes(k, dim, n_classes)
    if per_query > budget:
        largest = _largest_k_within(budget, dim, n_classes)
        raise InputError(
            f"k={k} needs {per_query / 2**30:.1f} GiB for a single query (the {k}x{k} kernel block and solver "
            f"work), more than the {budget / 2**20:.0f} MiB memory budget of a query chunk",
            hint=f"use --k {largest} or less, or pass --chunk-size 1 to run anyway with that much memory",
        )
    return int(min(budget // per_query, 8192))


def query_by_query_chunk(k: int, dim: int, n_k: int = 1) -> int:
    """Queries per scoring chunk where the scoring's cost does not fall with the chunk's size.

    The exact re-ranking, k-NN voting and the compiled NNK engine cost the same per query
    in a chunk of 16 as of 1,000, so a chunk only needs enough queries to hide its fixed
    costs: ``QUERY_BY_QUERY_CHUNK_BYTES`` of neighbor vectors, and at least
    ``QUERY_BY_QUERY_MIN_CHUNK`` queries per k value scored (each k's voting, weights and
    counts cost a fraction of a millisecond per chunk whatever its size), up to
    ``QUERY_BY_QUERY_MAX_FLOOR``. Larger chunks only hold more memory (at k = 200, d = 784 a
    chunk of 111 queries held 70 MiB of neighbor vectors, in each of the chunks in flight);
    the batched numpy engine, whose per-step cost is paid once per chunk, keeps the budget's
    chunk.
    """
    floor = min(QUERY_BY_QUERY_MIN_CHUNK * max(n_k, 1), QUERY_BY_QUERY_MAX_FLOOR)
    return max(floor, QUERY_BY_QUERY_CHUNK_BYTES // (4 * k * dim))


def _largest_k_within(budget: int, dim: int, n_classes: int) -> int:
    lo, hi = 1, 1
    while query_bytes(hi * 2, dim, n_classes) <= budget:
        hi *= 2
    lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if query_bytes(mid, dim, n_classes) <= budget else (lo, mid)
    return lo


class Evaluation:
    """An opened store, its train/query splits and a ready index (the set-up of one run)."""

    def __init__(
        self,
        store_path: str | os.PathLike,
        data: DataOptions | None = None,
        *,
        threads: int | None = None,
        progress_factory: Callable | None = None,
        search: tuple[str | None, str, bool] = (None, "cpu", False),
    ):
        from nnkcli.evaluation.torch_backend import resolve_backend
        from nnkcli.storage.store import FeatureStore

        data = data if data is not None else DataOptions()
        # (backend, device, fp16) -> the backend and device actually used, before any data is read
        self.backend, self.device = resolve_backend(*search)
        self.fp16 = bool(search[2])
        self.store_path = Path(store_path)
        self.store = FeatureStore(self.store_path)
        self.strict_provenance = data.strict_provenance
        try:
            self._open(data.train_split, data.query_split, data.index_path, data.rebuild_index, threads,
                       progress_factory)
            # the query rows this run evaluates: all, or one shard's contiguous range
            from nnkcli.evaluation.partials import shard_rows

            self.shard = data.shard
            self.rows = (0, int(self.query.n)) if data.shard is None else shard_rows(self.query.n, *data.shard)
        except BaseException:
            self.store.close()
            raise

    def _open(self, train_split, query_split, index_path, rebuild_index, threads, progress_factory):
        from nnkcli import index as nnk_index

        self.train = self.store.split(train_split)
        self.query = self.store.split(query_split)
        if self.train.dim != self.query.dim:
            raise InputError(
                f"query split '{query_split}' has dimension {self.query.dim} but train split "
                f"'{train_split}' has {self.train.dim}",
                hint="both splits must come from the same model",
            )
        if self.train.n < 1:
            raise InputError(f"train split '{train_split}' is empty")
        from nnkcli.storage.provenance import check_provenance

        # before the index is built or loaded: a refused run costs nothing
        self.warnings = check_provenance(self.train, self.query, strict=self.strict_provenance)
        for text in self.warnings:
            logger.warning(text)
        nnk_index.set_threads(threads)
        self.train_labels = np.asarray(self.train.labels, dtype=np.int64)
        self.query_labels = np.asarray(self.query.labels, dtype=np.int64)
        names = self.store.classes
        top_label = int(max(self.train_labels.max(initial=-1), self.query_labels.max(initial=-1)))
        self.n_classes = max(len(names) if names else 0, top_label + 1, 1)
        self.class_names = list(names) if names else [str(c) for c in range(self.n_classes)]
        if self.backend == "torch":
            from nnkcli.evaluation.torch_backend import TorchSearcher

            self.index = None
            self.index_info = {"path": None, "built_in_memory": True, "rebuilt": False, "type": "flat",
                               "backend": "torch", "device": self.device, "fp16": self.fp16}
            self._searcher = TorchSearcher(self.train, device=self.device, fp16=self.fp16)
            return
        self.index, self.index_info = self._resolve_index(index_path, rebuild_index, progress_factory)
        self.index_info["backend"] = "faiss"
        if self.index_info.get("shards"):
            from nnkcli.evaluation.search import ShardedSearcher

            self._searcher = ShardedSearcher(self.index)

    def _resolve_index(self, index_path, rebuild_index, progress_factory):
        from nnkcli import index as nnk_index

        explicit = index_path is not None
        path = Path(index_path) if explicit else nnk_index.default_index_path(self.store_path, self.train.name)
        info = {"path": str(path), "built_in_memory": False, "rebuilt": False}
        from nnkcli import shards

        if shards.is_manifest(path):
            return self._resolve_manifest(path, rebuild_index, progress_factory, info)
        if path.exists():
            loaded = None
            try:
                loaded = nnk_index.load_index(path)
                nnk_index.check_fresh(loaded, self.train, store_path=self.store_path)
            except nnk_index.IndexFileError as exc:
                if not rebuild_index:
                    raise
                logger.warning(f"{exc.message}; rebuilding it (--rebuild-index)")
                # keep the user's index type and parameters when the old file was readable
                params = loaded.params if loaded is not None else nnk_index.IndexParams()
                built = self._build(params, progress_factory)
                nnk_index.save_index(built, path)
                info["rebuilt"] = True
                info["type"] = built.params.index_type
                return built, info
            info["type"] = loaded.params.index_type
            return loaded, info
        if explicit:
            raise nnk_index.IndexFileError(
                f"index file not found: {path}", hint="build it with 'nnk index STORE --out PATH', or omit --index"
            )
        logger.info(f"no saved index at {path}; building a flat index in memory (run 'nnk index' to keep one)")
        built = self._build(nnk_index.IndexParams(), progress_factory)
        info.update(path=None, built_in_memory=True, type="flat")
        return built, info

    def _resolve_manifest(self, path, rebuild_index, progress_factory, info):
        """A sharded index (``nnk index --shards M``): the manifest is checked now, each shard when loaded
        (with ``--rebuild-index``, every shard now)."""
        from nnkcli import shards

        manifest = None
        try:
            manifest = shards.Manifest(path)
            manifest.check_fresh(self.train, store_path=self.store_path)
            if rebuild_index:  # an in-place edit shows only in the shards' rows: look at them all now
                manifest.check_samples()
        except shards.IndexFileError as exc:
            if not rebuild_index or manifest is None:
                raise
            logger.warning(f"{exc.message}; rebuilding it (--rebuild-index)")
            if progress_factory is not None:
                with progress_factory(self.train.n, "indexing") as advance:
                    manifest = shards.build_sharded(self.train, path, manifest.n_shards, manifest.params,
                                                    store_path=self.store_path, progress=advance)
            else:
                manifest = shards.build_sharded(self.train, path, manifest.n_shards, manifest.params,
                                                store_path=self.store_path)
            info["rebuilt"] = True
        info.update(type=manifest.params.index_type, shards=manifest.n_shards)
        return manifest, info

    def _build(self, params, progress_factory):
        from nnkcli import index as nnk_index

        if progress_factory is None:
            return nnk_index.build_index(self.train, params, store_path=self.store_path)
        with progress_factory(self.train.n, "indexing") as advance:
            return nnk_index.build_index(self.train, params, store_path=self.store_path, progress=advance)

    def max_k(self, exclude_self: bool) -> int:
        return int(self.train.n) - (1 if exclude_self else 0)

    def check_k(self, opts: ScoringOptions) -> None:
        """The k values against this data (k > n_train is a data error, exit 1, not a usage error)."""
        if opts.exclude_self and self.query.name != self.train.name:
            raise InputError(
                "--exclude-self needs the query split to be the train split",
                hint=f"pass --query-split {self.train.name} for leave-one-out evaluation",
            )
        largest = self.max_k(opts.exclude_self)
        for k in opts.k_values:
            if k > largest:
                raise InputError(
                    f"k={k} is larger than the train split allows ({self.train.n} rows)",
                    hint=f"the largest valid k is {largest}",
                )

    @property
    def searcher(self):
        """The one object the scoring code asks for neighbors (see ``nnkcli.evaluation.search``)."""
        found = self.__dict__.get("_searcher")
        if found is None:  # one faiss index (subclasses that set only ``index`` get this too)
            from nnkcli.evaluation.search import IndexSearcher

            found = self._searcher = IndexSearcher(self.index)
        return found

    def close(self) -> None:
        if self.__dict__.get("_searcher") is not None:
            self._searcher.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class MethodChunk:
    """One method's output for one chunk at one k."""

    top: np.ndarray  # (B, TOP) int64 class ids, -1 = none
    scores: np.ndarray  # (B, C) float64
    theta: np.ndarray | None = None  # (B, k) float64 raw NNK weights
    support: np.ndarray | None = None  # (B,) int NNK support sizes
    solver_stats: tuple | None = None  # pruning solver: (kkt failures, sum of objective gaps, queries, kkt tol)


@dataclass
class ChunkResult:
    start: int
    ids: np.ndarray  # (B, K) int64 neighbor rows in the train split, most similar first
    sims: np.ndarray  # (B, K) float64 cosine similarities
    labels: np.ndarray  # (B,) int64 true labels
    by_method_k: dict = field(default_factory=dict)  # (method, k) -> MethodChunk


def search_neighbors(ev: Evaluation, q: np.ndarray, start: int, k: int, exclude_self: bool):
    """Search, drop each query's own row under leave-one-out, re-rank exactly (see ``evaluation.search``).

    Returns ids (B, k) int64, sims (B, k) float64, X (B, k, d) float32 neighbor vectors, missing (B, k) bool.
    """
    return ev.searcher.neighbors(q, start, k, exclude_self)


def score_chunk(
    ev: Evaluation, q: np.ndarray, start: int, labels: np.ndarray, opts: ScoringOptions, timing: dict,
    found=None,
) -> ChunkResult:
    """All methods at all ``opts.k_values`` (ascending) for one chunk of normalized queries ``q`` (B, d).

    ``found`` = (ids, sims, X, missing) of the chunk's neighbors if already searched
    (the pipeline's search stage); else they are searched here.

    Results are keyed ``(method, k)``; the extra kNN temperatures of a grid ``("knn", k, T)``.
    """
    from nnkcli.numerics import solver
    from nnkcli.numerics.cosine import nnk_solve_cosine
    from nnkcli.numerics.scores import knn_scores_path

    k_values = opts.k_values
    k_max = k_values[-1]
    t0 = time.perf_counter()
    if found is None and hasattr(ev.searcher, "device_neighbors"):
        found = ev.searcher.device_neighbors(q, start, k_max, opts.exclude_self)
        timing["search_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
    if getattr(found, "on_device", False):  # the torch backend: the chunk is scored on its device
        from nnkcli.evaluation.torch_backend import device_scoring, score_on_device

        if device_scoring(opts):
            entries = score_on_device(found, ev.searcher.labels_on_device(ev.train_labels), ev.n_classes, opts,
                                      timing)
            out = ChunkResult(start=start, ids=found.ids.cpu().numpy(), sims=found.sims.cpu().numpy(),
                              labels=labels)
            out.by_method_k.update((key, MethodChunk(**entry)) for key, entry in entries.items())
            return out
        found = found.numpy()  # no device port of this NNK setting: numpy scores the chunk
    ids, sims, X, missing = search_neighbors(ev, q, start, k_max, opts.exclude_self) if found is None else found
    nb_labels = np.where(missing, -1, ev.train_labels[np.where(missing, 0, ids)])
    timing["search_s" if found is None else "rerank_s"] += time.perf_counter() - t0
    out = ChunkResult(start=start, ids=ids, sims=sims, labels=labels)
    C = ev.n_classes
    finite_sims = np.where(missing, 0.0, sims)  # a missing neighbor weighs nothing

    if "knn" in opts.methods:
        t0 = time.perf_counter()
        # a temperature grid re-weights the same neighbors: one exp per T, no new search; several
        # k (a sweep) add each k's new neighbors to the previous k's scores, bit for bit the same
        if len(k_values) == 1:
            paths = [[solver.knn_scores(finite_sims[:, :k_max], nb_labels[:, :k_max], C, weighting=opts.weighting,
                                        temperature=temperature)] for temperature in opts.knn_temperatures]
        else:
            paths = [knn_scores_path(finite_sims, nb_labels, C, k_values, weighting=opts.weighting,
                                     temperature=temperature) for temperature in opts.knn_temperatures]
        for ki, k in enumerate(k_values):
            for i, temperature in enumerate(opts.knn_temperatures):
                scores = paths[i][ki]
                key = ("knn", k) if i == 0 else ("knn", k, temperature)
                out.by_method_k[key] = MethodChunk(top=solver.topk_classes(scores, TOP, rule=opts.top5_rule),
                                                   scores=scores)
        timing["knn_s"] += time.perf_counter() - t0

    if "nnk" in opts.methods:
        t0 = time.perf_counter()
        if opts.solver == "pruning":
            path = _pruning_path(q, X, finite_sims, missing, k_values, opts)
        elif opts.kernel == "cosine":
            # k-independent kernel: every k solved from the leading neighbors of one search,
            # float32 candidates, float64 polish and certificate (nnkcli.numerics.cosine)
            g = 0.5 * (1.0 + finite_sims)
            Xc = X
            if missing.any():  # an absent neighbor: zero vector and g = 0, so theta = 0
                Xc = np.where(missing[:, :, None], np.float32(0.0), X)
                g[missing] = 0.0
            path = nnk_solve_cosine(Xc, g, k_values, tol=opts.tol)
        else:  # the Gaussian kernel's sigma depends on k: one block per k
            path = []
            for k in k_values:
                G, g = solver.kernel_blocks(q, X[:, :k], kernel=opts.kernel)
                _mask_missing(G, g, missing[:, :k])
                path.append(solver.nnk_solve(G, g, tol=opts.tol))
        for k, res in zip(k_values, path):
            scores = solver.nnk_scores(res.theta, nb_labels[:, :k], C)
            out.by_method_k[("nnk", k)] = MethodChunk(
                top=solver.topk_classes(scores, TOP, rule=opts.top5_rule), scores=scores, theta=res.theta,
                support=res.support_size, solver_stats=getattr(res, "stats", None),
            )
            timing["nnk_fallbacks"] += int(np.count_nonzero(getattr(res, "fallback", False)))
        timing["nnk_s"] += time.perf_counter() - t0
    return out


#: a pruning solution "fails the exact KKT certificate" above this relative residual. On the
#: sample store (k = 50) the float32 solves leave stationarity residuals of ~1e-7 on the
#: support, while pruned neighbors that should have come back have gradients of 1e-3..2e-2:
#: the tolerance separates the algorithm's misses from rounding
PRUNING_KKT_TOL = 1e-4


@dataclass
class _PrunedK:
    theta: np.ndarray
    support_size: np.ndarray
    stats: tuple


def _pruning_path(q, X, finite_sims, missing, k_values, opts):
    """The NNK paper's solver at every k, with what it costs against the exact solution.

    Each k starts from all k neighbors (as the published code does for its one k), from
    float32 kernel blocks; the exact float64 problem is solved too, to count the queries
    whose pruning weights fail its KKT certificate and the mean objective gap.
    """
    from nnkcli.numerics import solver
    from nnkcli.numerics.pruning import cosine_blocks_float32, pruning_solve

    G32, g32 = cosine_blocks_float32(q, X)
    G, g = solver.kernel_blocks(q, X, kernel="cosine", sims=finite_sims)
    _mask_missing(G, g, missing)
    exact = solver.nnk_solve_path(G, g, k_values, tol=opts.tol)
    out = []
    for k, ex in zip(k_values, exact):
        Gk32, gk32 = G32[:, :k, :k].copy(), g32[:, :k].copy()
        _mask_missing(Gk32, gk32, missing[:, :k])
        res = pruning_solve(Gk32, gk32)
        theta = res.theta
        Gk, gk = G[:, :k, :k], g[:, :k]
        lam = np.einsum("bij,bj->bi", Gk, theta) - gk
        scale = np.abs(gk).max(axis=1)
        scale = np.where(scale > 0, scale, 1.0)
        viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0)).max(axis=1) / scale
        objective = 0.5 * np.einsum("bi,bi->b", theta, lam + gk) - np.einsum("bi,bi->b", gk, theta)
        gap = np.maximum(objective - ex.objective, 0.0)
        out.append(_PrunedK(theta=theta, support_size=res.support_size,
                            stats=(int(np.count_nonzero(viol > PRUNING_KKT_TOL)), float(gap.sum()), len(theta),
                                   PRUNING_KKT_TOL)))
    return out


def _mask_missing(G: np.ndarray, g: np.ndarray, missing: np.ndarray) -> None:
    """Neighbors an approximate index did not return get K = identity row, g = 0, hence theta = 0."""
    if not missing.any():
        return
    b, j = np.nonzero(missing)
    G[b, j, :] = 0.0
    G[b, :, j] = 0.0
    G[b, j, j] = 1.0
    g[b, j] = 0.0


def evaluate_chunks(
    ev: Evaluation,
    opts: ScoringOptions,
    *,
    progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    keep_hits: bool = False,
) -> tuple[dict, dict]:
    """Stream the query split through ``score_chunk`` at every k of ``opts.k_values``.

    ``keep_hits`` keeps every labelled query's correctness per (method, k) in the
    accumulators (``Accumulator.hits``), for paired tests; 2 bytes per query and (method, k).

    Returns
    -------
    accumulators : dict mapping (method, k) -> Accumulator
    timing : dict of seconds (read, search, knn, nnk, total) and queries per second
    """
    from nnkcli.evaluation.pipeline import SEARCH_BLOCK, balanced_block, run_pipeline, searches_in_flight
    from nnkcli.numerics.kernels import normalize_rows
    from nnkcli.parallel import resolve_threads

    ev.check_k(opts)
    k_values = opts.k_values
    k_max = k_values[-1]
    threads = resolve_threads(opts.threads)
    searcher = ev.searcher
    # a sharded index asks for a smaller working memory beside its one loaded shard;
    # every worker holds one scoring sub-chunk: they share the budget
    budget = min(CHUNK_MEMORY_BUDGET, getattr(searcher, "chunk_budget", CHUNK_MEMORY_BUDGET))
    on_device = hasattr(searcher, "device_neighbors")  # the torch backend scores on its device
    compiled_nnk = _solves_cosine_nnk(opts) and not on_device and compiled.expected()
    if compiled_nnk:
        # the compiled NNK engine's runtime lives beside the chunks: the budget covers both
        budget = max(budget - compiled.RUNTIME_BYTES, budget // 2)
    chunk = opts.chunk_size or default_chunk_size(k_max, ev.train.dim, ev.n_classes, budget=budget // threads)
    split = hasattr(searcher, "search_ids") and hasattr(searcher, "refine")
    # every method scores on the CPU at a cost per query (k-NN, compiled NNK): small chunks do
    if not opts.chunk_size and split and not on_device and ("nnk" not in opts.methods or compiled_nnk):
        chunk = min(chunk, query_by_query_chunk(k_max, ev.train.dim, len(k_values)))
    # large search blocks for the search's matrix products; a searcher that returns the
    # neighbor vectors with the ids (shards, GPU) searches sub-chunks, which keeps the memory bound
    first, stop = getattr(ev, "rows", (0, int(ev.query.n)))  # all queries, or one --shard's range
    if split:
        per_block = SEARCH_IDS_BUDGET // searches_in_flight(threads)
        block = max(chunk, min(SEARCH_BLOCK, per_block // (12 * (k_max + 1) + 4 * ev.train.dim)))
        block = balanced_block(stop - first, block, threads)  # the last searches end together
    else:
        block = min(chunk, max(stop - first, 1))
    lock = None if getattr(searcher, "thread_safe", False) else threading.Lock()
    # the torch backend hands the neighbors over on its device, where score_chunk scores them
    fetch = getattr(searcher, "device_neighbors", searcher.neighbors)
    accs = make_accumulators(ev, opts, keep_hits=keep_hits)
    timing = {"read_s": 0.0, "search_s": 0.0, "rerank_s": 0.0, "knn_s": 0.0, "nnk_s": 0.0, "nnk_fallbacks": 0}

    def blocks():
        t0 = time.perf_counter()
        for start in range(first, stop, block):
            q = normalize_rows(ev.query.read(start, min(start + block, stop)))
            timing["read_s"] += time.perf_counter() - t0
            yield start, q
            t0 = time.perf_counter()

    def search(q, start):
        if lock is None:
            return searcher.search_ids(q, start, k_max, opts.exclude_self)
        with lock:  # a searcher that keeps state (the loaded shard) serves one block at a time
            if split:
                return searcher.search_ids(q, start, k_max, opts.exclude_self)
            return fetch(q, start, k_max, opts.exclude_self)

    def score(q, start, found):
        own = dict.fromkeys(timing, 0.0)
        own["nnk_fallbacks"] = 0
        labels = ev.query_labels[start : start + len(q)]
        if split:
            t0 = time.perf_counter()
            found = searcher.refine(q, found)
            own["rerank_s"] += time.perf_counter() - t0
        return score_chunk(ev, q, start, labels, opts, own, found=found), own

    t_start = time.perf_counter()
    stages = run_pipeline(blocks(), search, score, sub_chunk=chunk if split else block, threads=threads)
    for (res, own), search_s, _ in stages:
        timing["search_s"] += search_s
        for key in ("rerank_s", "knn_s", "nnk_s", "nnk_fallbacks"):
            timing[key] += own[key]
        for key, mc in res.by_method_k.items():
            accs[key].update(mc.top, res.labels, mc.support, mc.solver_stats)
        if on_chunk is not None:
            on_chunk(res)
        if progress is not None:
            progress(len(res.labels))
    total = time.perf_counter() - t_start
    timing = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items()}
    timing["total_s"] = round(total, 4)
    timing["queries_per_s"] = round((stop - first) / total, 1) if total > 0 else None
    timing["chunk_size"] = chunk
    timing["search_block"] = block
    timing["threads"] = threads
    if _solves_cosine_nnk(opts):
        # which code solved the NNK problems on the CPU (the weights carry the same certificate)
        timing["nnk_engine"] = "torch" if on_device else "compiled" if compiled.available() else "numpy"
    return accs, timing


def make_accumulators(ev: Evaluation, opts: ScoringOptions, keep_hits: bool = False) -> dict:
    """One Accumulator per result key of ``score_chunk`` (method, k and, for a kNN grid, T)."""
    accs = {}
    for m in opts.methods:
        for k in opts.k_values:
            if m == "knn":
                for i, t in enumerate(opts.knn_temperatures):
                    accs[("knn", k) if i == 0 else ("knn", k, t)] = Accumulator(
                        "knn", k, ev.n_classes, temperature=t, keep_hits=keep_hits)
            else:
                accs[(m, k)] = Accumulator(m, k, ev.n_classes, solver=opts.solver, keep_hits=keep_hits)
    return accs


def check_labelled(ev: Evaluation, gate_requested: bool) -> None:
    """A query split with no labels at all: predictions only (an error if a gate needs accuracy)."""
    if ev.query.n and not (ev.query_labels >= 0).any():
        if gate_requested:
            raise InputError(
                f"query split '{ev.query.name}' has no labels, so --min-top1/--min-top5 cannot be checked",
                hint="extract the query split with --labels, or drop the gate",
            )
        logger.warning(f"query split '{ev.query.name}' has no labels: predictions only, no accuracy")


def _solves_cosine_nnk(opts: ScoringOptions) -> bool:
    """Whether a run solves cosine-kernel NNK problems (the ones the compiled engine takes)."""
    return "nnk" in opts.methods and opts.kernel == "cosine" and opts.solver == "exact"


def open_evaluation(store_path, options: ScoringOptions, data: DataOptions, progress_factory=None) -> Evaluation:
    """Open the store and its index for ``options`` (classify and sweep)."""
    if _solves_cosine_nnk(options):
        compiled.warm_up()  # loads the compiled kernel while the index loads and the first block is searched
    return Evaluation(store_path, data, threads=options.threads, progress_factory=progress_factory,
                      search=(options.backend, options.device, options.fp16))


def classify(
    store_path: str | os.PathLike,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    k: int | None = None,
    per_class: bool = False,
    predictions_path: str | os.PathLike | None = None,
    gate_requested: bool = False,
    progress_factory: Callable | None = None,
    **settings,
) -> dict:
    """Evaluate NNK and/or weighted kNN at one k; returns the JSON-able result document.

    Parameters
    ----------
    store_path : path-like
        The feature store.
    options : ScoringOptions, optional
        How queries are scored; its ``k_values`` must hold one k (default: ``k=50``).
    data : DataOptions, optional
        Splits and saved index (default: train vs val, the saved index if present).
    k : int, optional
        Shorthand for ``k_values=(k,)``.
    per_class : bool
        Add per-class top-1 to each result.
    predictions_path : path-like, optional
        Write per-query results to this HDF5 file (atomically).
    gate_requested : bool
        A query split without labels is then an error (there is no accuracy to gate).
    progress_factory : callable, optional
        ``progress_factory(total, description)``: a context manager yielding ``advance(n)``.
    **settings
        Any field of ``ScoringOptions`` or ``DataOptions`` (``methods="knn"``,
        ``query_split="test"`` ...), applied over ``options``/``data``.

    See the module docstring for the memory bound.

    Examples
    --------
    >>> doc = classify(demo_store, k=10, methods="knn")   # demo_store: a feature store's path
    >>> [(r["method"], r["k"], r["n_queries"]) for r in doc["results"]]
    [('knn', 10, 30)]
    >>> doc["parameters"]["k_values"], doc["parameters"]["methods"]
    ([10], ['knn'])
    """
    if predictions_path is not None:
        from nnkcli.storage.atomic import check_can_create

        check_can_create(predictions_path, "predictions")  # before the index is loaded or built
    if k is not None:
        settings["k_values"] = (k,)
    options, data = resolve_one_k(options, data, settings, command="classify", protocol=True)
    (k,) = options.k_values
    check_shard_output(data.shard, predictions_path, output_name="predictions_path")
    ev = open_evaluation(store_path, options, data, progress_factory)
    with ev:
        check_labelled(ev, gate_requested)
        ev.check_k(options)  # before the predictions file is created (evaluate_chunks checks again, cheaply)
        writer = None
        try:  # the writer is made inside: a signal just after it is made still aborts it
            if predictions_path is not None and data.shard is not None:
                writer = partial_writer(predictions_path, ev, options, "classify", per_class=per_class)
            elif predictions_path is not None:
                from nnkcli.evaluation.predictions import PredictionWriter

                writer = PredictionWriter(predictions_path, ev, options)
            on_chunk = writer.write if writer is not None else None
            if progress_factory is not None:
                with progress_factory(ev.rows[1] - ev.rows[0], "classifying") as advance:
                    accs, timing = evaluate_chunks(ev, options, progress=advance, on_chunk=on_chunk)
            else:
                accs, timing = evaluate_chunks(ev, options, on_chunk=on_chunk)
            doc = result_document(ev, options, accs, timing, per_class, k=k, predictions_path=predictions_path)
            if writer is not None:
                writer.commit(doc if data.shard is not None else result_document(ev, options, accs, timing,
                                                                                   per_class))
        except BaseException:
            if writer is not None:
                writer.abort()  # nothing half-written is left behind, an old file is kept
            raise
        return doc


def partial_writer(path, ev, options: ScoringOptions, command: str, *, per_class: bool = False):
    """The partial result file of this run's query rows (``--shard I/N --out PART.h5``)."""
    from nnkcli.evaluation.partials import PartialWriter

    if options.temperature_grid or options.solver != "exact":
        # a partial file holds one kNN temperature, and merging cannot sum the pruning solver's costs
        raise InputError("sharded runs (--shard) take one --temperature and the exact solver",
                         hint="run a temperature grid or --solver pruning on the whole query split")
    shard, n_shards = ev.shard if ev.shard is not None else (0, 1)
    return PartialWriter(path, ev, options, options.k_values, command=command, shard=shard, n_shards=n_shards,
                         rows=ev.rows, per_class=per_class, alpha=options.alpha)


def result_document(ev, opts: ScoringOptions, accs, timing, per_class, **extra) -> dict:
    """The JSON-able document of one evaluation; ``"parameters"`` is ``opts.as_dict()`` whole."""
    def row(acc):
        return acc.result(per_class=per_class, class_names=ev.class_names, confidence=opts.confidence)

    workers = min(len(accs), int(timing.get("threads") or 1))
    if workers > 1:
        # each row's balanced-accuracy interval is a bootstrap (~30 ms at 100 classes; numpy's
        # sampler releases the GIL): a 20-k sweep's 40 rows on --threads workers, in order
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="nnkcli-results") as pool:
            results = list(pool.map(row, accs.values()))
    else:
        results = [row(acc) for acc in accs.values()]
    n_unlabelled = int((ev.query_labels < 0).sum())
    doc = {
        "store": str(ev.store_path) if ev.store_path is not None else None,  # None: arrays in memory
        "train_split": ev.train.name,
        "query_split": ev.query.name,
        "n_train": int(ev.train.n),
        "n_queries": int(ev.query.n),
        "n_unlabelled": n_unlabelled,
        "n_classes": ev.n_classes,
        "index": ev.index_info,
        "parameters": opts.as_dict(),
        "results": results,
        "timing": timing,
        "warnings": list(getattr(ev, "warnings", [])),
    }
    if getattr(ev, "shard", None) is not None:
        doc["shard"] = {"shard": ev.shard[0], "n_shards": ev.shard[1], "rows": list(ev.rows)}
    for key, value in extra.items():
        if value is not None:
            doc[key] = str(value) if isinstance(value, Path) else value
    return doc
