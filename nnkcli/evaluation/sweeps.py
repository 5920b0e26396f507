"""Accuracy versus k for NNK and weighted kNN from one search per query chunk.

Each chunk is searched once at max(k); every smaller k uses the leading (most
similar) neighbors of that search. For NNK with the cosine kernel the kernel
block of every k is the leading block of the one built at max(k), and each k's
solve is warm-started from the previous k's support. The result at each k is
exactly what ``classify`` gives at that k (the same code computes both).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from nnkcli.errors import InputError
from nnkcli.evaluation.documents import result_document, whole_run_timing
from nnkcli.evaluation.options import (
    DEFAULT_ALPHA,
    DataOptions,
    ScoringOptions,
    apply_protocol,
    check_shard_output,
    resolve,
)
from nnkcli.evaluation.results import SweepResult
from nnkcli.evaluation.selection import run_selection
from nnkcli.evaluation.setup import Evaluation, check_labelled, open_evaluation, with_k
from nnkcli.evaluation.streaming import evaluate_chunks
from nnkcli.numerics.stats import mcnemar_exact

__all__ = ["SweepResult", "best_per_method", "sweep"]


def best_per_method(results: Sequence[dict], hits: dict | None = None, alpha: float = DEFAULT_ALPHA) -> dict:
    """Per method, the row with the highest top-1 (ties: the smaller k, then the smaller T).

    The entry holds ``k``, ``top1``, ``top5`` (and their intervals) and, for a kNN row,
    ``temperature``. With ``hits`` ((method, k, T or None) -> per-query top-1 correctness,
    the same queries for every k), each best also says which other k (at the best's T) are
    *not* significantly worse than it:
    McNemar's exact test of that k against the best k on the same queries, p >= ``alpha``
    (``tied_k``); ``recommended_k`` is the smallest k among the best and those, the
    cheapest k that the data cannot tell apart from the best; ``significant`` is true
    when no other k is tied.
    """
    best: dict = {}
    chosen: dict = {}
    for row in results:
        top1 = row.get("top1")
        if top1 is None or top1 != top1:
            continue
        rank = (-top1, row["k"], row.get("temperature") or 0.0)
        if row["method"] not in chosen or rank < chosen[row["method"]]:
            chosen[row["method"]] = rank
            entry = {"k": row["k"], "top1": top1, "top5": row.get("top5")}
            entry.update({key: row[key] for key in ("top1_ci", "top5_ci") if key in row})
            if row.get("temperature") is not None:
                entry["temperature"] = row["temperature"]
            best[row["method"]] = entry
    if hits is None:
        return best
    for method, b in best.items():
        t = b.get("temperature")
        ref = hits[(method, b["k"], t)]
        tied = []
        for row in results:
            if row["method"] != method or row["k"] == b["k"] or row.get("temperature") != t:
                continue
            other = hits[(method, row["k"], t)]
            p = mcnemar_exact(int((ref & ~other).sum()), int((other & ~ref).sum()))
            if p >= alpha:
                tied.append(row["k"])
        b["tied_k"] = tied
        b["recommended_k"] = min([b["k"], *tied])
        b["significant"] = not tied
        b["alpha"] = alpha
    return best


def selected_results(selection_rows_: list[dict], query_rows: list[dict], n_select: int) -> dict:
    """Per method: the (k, T) chosen on the selection rows, with the query split's row at that choice.

    ``selection_rows_`` and ``query_rows`` are result rows (``Accumulator.result``) of the
    leave-one-out run and of the query split. Ties: the smaller k, then the smaller T.
    """
    chosen = best_per_method(selection_rows_)
    out = {}
    for method, pick in chosen.items():
        row = next(
            r
            for r in query_rows
            if r["method"] == method and r["k"] == pick["k"] and r.get("temperature") == pick.get("temperature")
        )
        entry = {"k": pick["k"]}
        if "temperature" in pick:
            entry["temperature"] = pick["temperature"]
        entry["selection_top1"] = pick["top1"]
        entry["selection_queries"] = int(n_select)
        entry.update({key: value for key, value in row.items() if key not in ("method", "k", "temperature")})
        out[method] = entry
    return out


def sweep(
    store_path: str | os.PathLike,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    k: int | str | Sequence[int] | None = None,
    gate_requested: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_factory: Callable | None = None,
    partial_path: str | os.PathLike | None = None,
    **settings,
) -> SweepResult:
    """Evaluate every k of ``k`` (and kNN temperature) from one search per chunk.

    ``k`` is an int, a list of ints or a ``--k`` SPEC (``k=[10, 20]``, ``k=range(10, 201, 10)``,
    ``k="10..200"``; default: the ``protocol``'s k values, else ``options.k_values``).
    ``options``, ``data`` and ``**settings`` are as in ``classify`` (``temperature=(0.05, 0.1)`` a kNN grid;
    ``protocol="dino"`` a preset for what is not given). Results are ordered by method, then
    k, then T; ``best`` holds each method's best (k, T) on the query split (optimistic: chosen
    on the split it reports) and the k values not significantly worse than it at
    ``options.alpha`` (see :func:`best_per_method`). With ``select_on="train"``,
    ``selected`` holds the (k, T) chosen by leave-one-out on ``select_queries`` seeded train
    rows (``nnkcli.evaluation.selection``) and the query split's results there; the query
    split's labels play no part in that choice.

    ``partial_path`` writes the per-query predictions of the evaluated rows (all, or the
    shard ``data.shard``) as a partial result file for ``nnk merge``
    (``nnkcli.evaluation.partials``); a shard needs one.

    Examples
    --------
    >>> result = sweep(demo_store, k="5..15:5")   # demo_store: a feature store's path
    >>> result.to_dict()["k_values"], sorted(result.best)
    ([5, 10, 15], ['knn', 'nnk'])
    >>> [(row["method"], row["k"]) for row in result.rows()][:2]
    [('nnk', 5), ('nnk', 10)]
    """
    options, data = resolve(options, data, apply_protocol(with_k(settings, k)))
    select_on = options.select_on
    check_shard_output(data.shard, partial_path, output_name="partial_path")
    if partial_path is not None and (select_on is not None or options.temperature_grid):
        raise InputError(
            "--out/--shard partial results take one temperature and no --select-on",
            hint="run the selection (and the temperature grid) on the whole query split",
        )
    started = time.perf_counter()
    ev = open_evaluation(store_path, options, data, progress_factory)
    with ev:
        return sweep_evaluation(
            ev,
            options,
            gate_requested=gate_requested,
            progress=progress,
            progress_factory=progress_factory,
            partial_path=partial_path,
            started=started,
        )


def sweep_evaluation(
    ev: Evaluation,
    options: ScoringOptions,
    *,
    gate_requested: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_factory: Callable | None = None,
    partial_path: str | os.PathLike | None = None,
    started: float | None = None,
) -> SweepResult:
    """The sweep of an opened evaluation (``Evaluation.from_store`` or ``Evaluation.from_arrays``).

    ``started``: the ``time.perf_counter()`` taken before ``ev`` was opened, so that the timing's
    ``total_s`` and ``index_s`` count the opening too (None: ``ev`` was opened beforehand, not counted).
    """
    from nnkcli.evaluation.partials import partial_writer

    now = time.perf_counter()
    started, opened_s = (now, 0.0) if started is None else (started, now - started)
    select_on = options.select_on
    check_labelled(ev, gate_requested and select_on is None)
    ev.check_k(options)
    writer = None
    try:  # the writer is made inside: a signal just after it is made still aborts it
        writer = partial_writer(partial_path, ev, options, "sweep") if partial_path is not None else None
        on_chunk = writer.write if writer is not None else None
        if progress is None and progress_factory is not None:
            with progress_factory(ev.rows[1] - ev.rows[0], "sweeping") as advance:
                accs, timing = evaluate_chunks(ev, options, progress=advance, keep_hits=True, on_chunk=on_chunk)
        else:
            accs, timing = evaluate_chunks(ev, options, progress=progress, keep_hits=True, on_chunk=on_chunk)
        doc = result_document(ev, options, accs, timing, per_class=False)
        hits = {(acc.method, acc.k, acc.temperature): acc.hits()[0] for acc in accs.values()}
        labels, ids = ev.query_labels, ev.query.ids
        finish_sweep_document(doc, options.k_values, options.methods, hits, options.alpha)
        whole_run_timing(doc["timing"], started=started, opened_s=opened_s)
        if writer is not None:
            writer.commit(doc)
            doc["partial_path"] = str(partial_path)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if select_on is not None:
        n_select, seed = options.select_queries, options.select_seed
        if progress_factory is not None:
            with progress_factory(min(n_select, int(ev.train.n)), "selecting on train") as advance:
                sel_accs, info = run_selection(ev, options, n_select=n_select, seed=seed, progress=advance)
        else:
            sel_accs, info = run_selection(ev, options, n_select=n_select, seed=seed)
        order = lambda r: (options.methods.index(r["method"]), r["k"], r.get("temperature") or 0.0)  # noqa: E731
        sel_rows = sorted((a.result() for a in sel_accs.values()), key=order)
        doc["selection"] = {
            "on": select_on,
            "split": ev.train.name,
            "queries": info["rows"],
            "seed": info["seed"],
            "leave_one_out": True,
            "seconds": info["seconds"],
            "results": sel_rows,
        }
        doc["selected"] = selected_results(sel_rows, doc["results"], info["rows"])
        doc["timing"]["selection_s"] = info["seconds"]
        whole_run_timing(doc["timing"], started=started, opened_s=opened_s)  # the selection included
    # the per-query hits of what the gates check: the selected (k, T) with --select-on, else the best
    chosen = doc.get("selected") or doc["best"]
    best_hits = {m: (b["k"], hits[(m, b["k"], b.get("temperature"))]) for m, b in chosen.items()}
    return SweepResult(doc, best_hits=best_hits, query_labels=labels, query_ids=ids)


def finish_sweep_document(doc: dict, k_values, methods, hits: dict, alpha: float) -> dict:
    """Sweep's additions to a result document: k values, rows by method, k then T, the best (k, T) (and ties).

    ``hits`` is keyed ``(method, k, T)`` (T None for NNK rows, and for rows without a
    temperature); a ``(method, k)`` key (one temperature) takes the T of that row.
    """
    row_t = {(r["method"], r["k"]): r.get("temperature") for r in doc["results"]}
    hits = {(key if len(key) == 3 else (*key, row_t.get(key))): value for key, value in hits.items()}
    doc["k_values"] = list(k_values)
    doc["results"] = sorted(
        doc["results"], key=lambda r: (list(methods).index(r["method"]), r["k"], r.get("temperature") or 0.0)
    )
    doc["best"] = best_per_method(doc["results"], hits, alpha)
    return doc
