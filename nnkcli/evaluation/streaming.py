"""The streaming driver: the query split read, searched and scored block by block into accumulators.

The query split is read and searched in blocks (``nnkcli.evaluation.pipeline``: one
index search per block at the largest k needed, thousands of queries at once), and
each block is scored in chunks (``nnkcli.evaluation.scoring``): an exact re-ranking of the
neighbors (float64 cosine from the stored vectors, ties broken by row id, so results do not
depend on faiss's blocking, the chunk size or the thread count), then the requested methods
at every requested k. Blocks and chunks run on ``--threads`` worker threads, sized by
``nnkcli.evaluation.memory``. Every result is added to one ``Accumulator`` per
(method, k[, T]), in query order; nothing of size n_query x n_train is ever held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from nnkcli.evaluation.memory import plan_chunks
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.evaluation.scoring import ChunkResult, score_chunk, solves_cosine_nnk
from nnkcli.numerics import compiled
from nnkcli.numerics.metrics import Accumulator


def evaluate_chunks(
    ev,
    opts: ScoringOptions,
    *,
    progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    keep_hits: bool = False,
) -> tuple[dict, dict]:
    """Stream the query rows ``ev.rows`` of an :class:`~nnkcli.evaluation.setup.Evaluation` through
    ``score_chunk`` at every k of ``opts.k_values``.

    ``keep_hits`` keeps every labelled query's correctness per (method, k) in the
    accumulators (``Accumulator.hits``), for paired tests; 2 bytes per query and (method, k).

    Returns
    -------
    accumulators : dict mapping (method, k) -> Accumulator
    timing : dict of seconds (read, search, knn, nnk, total) and queries per second
    """
    from nnkcli.evaluation.pipeline import run_pipeline
    from nnkcli.numerics.kernels import normalize_rows
    from nnkcli.parallel import resolve_threads

    ev.check_k(opts)
    k_max = opts.k_values[-1]
    threads = resolve_threads(opts.threads)
    searcher = ev.searcher
    first, stop = ev.rows  # all queries, or one --shard's range
    chunk, block = plan_chunks(
        searcher, opts, dim=ev.train.dim, n_classes=ev.n_classes, threads=threads, n_rows=stop - first
    )
    split = searcher.two_stage
    lock = None if searcher.thread_safe else threading.Lock()
    # the torch backend hands the neighbors over on its device, where score_chunk scores them
    fetch = searcher.device_neighbors if searcher.on_device else searcher.neighbors
    accs = make_accumulators(ev, opts, keep_hits=keep_hits)
    timing: dict[str, Any] = {
        "read_s": 0.0,
        "search_s": 0.0,
        "rerank_s": 0.0,
        "knn_s": 0.0,
        "nnk_s": 0.0,
        "nnk_fallbacks": 0,
    }

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
    for scored, search_s, _ in stages:
        res, own = cast("tuple[ChunkResult, dict]", scored)
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
    timing["search_kernel"] = searcher.search_kernel
    timing["search_fallbacks"] = searcher.search_fallbacks
    if solves_cosine_nnk(opts):
        # which code solved the NNK problems on the CPU (the weights carry the same certificate)
        timing["nnk_engine"] = "torch" if searcher.on_device else "compiled" if compiled.available() else "numpy"
    return accs, timing


def make_accumulators(ev, opts: ScoringOptions, keep_hits: bool = False) -> dict:
    """One Accumulator per result key of ``score_chunk`` (method, k and, for a kNN grid, T)."""
    accs = {}
    for m in opts.methods:
        for k in opts.k_values:
            if m == "knn":
                for i, t in enumerate(opts.knn_temperatures):
                    accs[("knn", k) if i == 0 else ("knn", k, t)] = Accumulator(
                        "knn", k, ev.n_classes, temperature=t, keep_hits=keep_hits
                    )
            else:
                accs[(m, k)] = Accumulator(m, k, ev.n_classes, solver=opts.solver, keep_hits=keep_hits)
    return accs
