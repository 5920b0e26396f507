"""The result document of one evaluation: what ``classify`` and ``sweep`` return and ``--format json`` prints.

Built once per run, from the accumulators ``evaluate_chunks`` filled: every row's
intervals (Wilson for top-1/top-5, a stratified bootstrap for the balanced accuracy,
~30 ms a row at 100 classes) are computed here, so a caller that needs the document twice
(the printed result and a file's attributes) passes the same one on.
Accuracies are percentages (0-100) throughout.
"""

from __future__ import annotations

import time
from pathlib import Path

from nnkcli.evaluation.options import ScoringOptions


def result_document(ev, opts: ScoringOptions, accs: dict, timing: dict, per_class: bool, **extra) -> dict:
    """The JSON-able document of one evaluation; ``"parameters"`` is ``opts.as_dict()`` whole.

    ``ev`` is the :class:`~nnkcli.evaluation.setup.Evaluation` evaluated, ``accs`` and
    ``timing`` what ``evaluate_chunks`` returned; ``extra`` keys not None are added
    (paths as strings).
    """

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
        "warnings": list(ev.warnings),
    }
    if ev.shard is not None:
        doc["shard"] = {"shard": ev.shard[0], "n_shards": ev.shard[1], "rows": list(ev.rows)}
    for key, value in extra.items():
        if value is not None:
            doc[key] = str(value) if isinstance(value, Path) else value
    return doc


def whole_run_timing(timing: dict, *, started: float, opened_s: float) -> dict:
    """``timing`` (what ``evaluate_chunks`` returned) completed with every stage of the run, in place.

    ``evaluate_s``: the queries' search and scoring (``evaluate_chunks``' own ``total_s``, of
    which ``queries_per_s`` is the rate); ``index_s``: opening the store and loading or building
    the index (``opened_s``); ``total_s``: the whole run from ``started`` (a ``time.perf_counter()``
    taken before the store was opened): these, the summary (intervals, best k, significance)
    and the selection on train (``selection_s``, added by a sweep) included.
    """
    timing["evaluate_s"] = timing.get("evaluate_s", timing.get("total_s"))
    timing["index_s"] = round(opened_s, 4)
    timing["total_s"] = round(time.perf_counter() - started, 4)
    return timing
