"""Accuracy versus k for NNK and weighted kNN from one search per query chunk.

Each chunk is searched once at max(k); every smaller k uses the leading (most
similar) neighbors of that search. For NNK with the cosine kernel the kernel
block of every k is the leading block of the one built at max(k), and each k's
solve is warm-started from the previous k's support. The result at each k is
exactly what ``classify`` gives at that k (the same code computes both).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nnkcli.evaluation.classification import check_labelled, evaluate_chunks, open_evaluation, result_document
from nnkcli.evaluation.options import DEFAULT_ALPHA, DataOptions, ScoringOptions, parse_k_spec, resolve
from nnkcli.errors import InputError
from nnkcli.numerics.stats import mcnemar_exact

__all__ = ["SweepResult", "best_per_method", "parse_k_spec", "sweep"]


@dataclass
class SweepResult:
    """The sweep's JSON-able document (see :meth:`to_dict`).

    ``best_hits``: per method, (its best k, per labelled query whether top-1 was right
    at that k), bool (n_labelled,); ``query_labels``/``query_ids``: the query split's
    labels (all rows) and sample ids (or None) — for paired tests against other runs.
    Not part of the document.
    """

    document: dict
    best_hits: dict | None = None
    query_labels: object = None
    query_ids: list | None = None

    def to_dict(self) -> dict:
        return self.document

    @property
    def results(self) -> list[dict]:
        return self.document["results"]

    @property
    def best(self) -> dict:
        return self.document["best"]


def best_per_method(results: Sequence[dict], hits: dict | None = None, alpha: float = DEFAULT_ALPHA) -> dict:
    """Per method, the row with the highest top-1 (ties: the smaller k, which is cheaper).

    With ``hits`` ((method, k) -> per-query top-1 correctness, the same queries for
    every k), each best also says which other k are *not* significantly worse than it:
    McNemar's exact test of that k against the best k on the same queries, p >= ``alpha``
    (``tied_k``); ``recommended_k`` is the smallest k among the best and those, the
    cheapest k that the data cannot tell apart from the best; ``significant`` is true
    when no other k is tied.
    """
    best: dict = {}
    for row in results:
        top1 = row.get("top1")
        if top1 is None or top1 != top1:
            continue
        current = best.get(row["method"])
        if current is None or top1 > current["top1"] or (top1 == current["top1"] and row["k"] < current["k"]):
            best[row["method"]] = {"k": row["k"], "top1": top1, "top5": row.get("top5")}
            best[row["method"]].update({key: row[key] for key in ("top1_ci", "top5_ci") if key in row})
    if hits is None:
        return best
    for method, b in best.items():
        ref = hits[(method, b["k"])]
        tied = []
        for row in results:
            if row["method"] != method or row["k"] == b["k"]:
                continue
            other = hits[(method, row["k"])]
            p = mcnemar_exact(int((ref & ~other).sum()), int((other & ~ref).sum()))
            if p >= alpha:
                tied.append(row["k"])
        b["tied_k"] = tied
        b["recommended_k"] = min([b["k"], *tied])
        b["significant"] = not tied
        b["alpha"] = alpha
    return best


def sweep(
    store_path: str | os.PathLike,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    gate_requested: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_factory: Callable | None = None,
    partial_path: str | os.PathLike | None = None,
    **settings,
) -> SweepResult:
    """Evaluate every k of ``options.k_values`` for every method from one search per chunk.

    ``options``, ``data`` and ``**settings`` are as in ``classify`` (``k_values=range(10, 201, 10)``
    or ``k_values="10..200"`` is the usual keyword). Results are ordered by method, then k;
    ``best`` holds each method's best k and the k values not significantly worse than it at
    ``options.alpha`` (see :func:`best_per_method`).

    ``partial_path`` writes the per-query predictions of the evaluated rows (all, or the
    shard ``data.shard``) as a partial result file for ``nnk merge``
    (``nnkcli.evaluation.partials``); a shard needs one.

    Examples
    --------
    >>> result = sweep(demo_store, k_values="5..15:5")   # demo_store: a feature store's path
    >>> result.document["k_values"], sorted(result.best)
    ([5, 10, 15], ['knn', 'nnk'])
    """
    options, data = resolve(options, data, settings)
    if data.shard is not None and partial_path is None:
        raise InputError("--shard needs --out PART.h5: a shard's results are only useful merged",
                         hint="add --out shard-I.h5, then 'nnk merge shard-*.h5'")
    ev = open_evaluation(store_path, options, data, progress_factory)
    with ev:
        return sweep_evaluation(ev, options, gate_requested=gate_requested, progress=progress,
                                progress_factory=progress_factory, partial_path=partial_path)


def sweep_evaluation(
    ev,
    options: ScoringOptions,
    *,
    gate_requested: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_factory: Callable | None = None,
    partial_path: str | os.PathLike | None = None,
) -> SweepResult:
    """The sweep of an opened evaluation: a store's ``Evaluation`` or an ``InMemoryEvaluation``."""
    from nnkcli.evaluation.classification import partial_writer

    check_labelled(ev, gate_requested)
    ev.check_k(options)
    writer = partial_writer(partial_path, ev, options, "sweep") if partial_path is not None else None
    on_chunk = writer.write if writer is not None else None
    try:
        if progress is None and progress_factory is not None:
            with progress_factory(ev.rows[1] - ev.rows[0], "sweeping") as advance:
                accs, timing = evaluate_chunks(ev, options, progress=advance, keep_hits=True, on_chunk=on_chunk)
        else:
            accs, timing = evaluate_chunks(ev, options, progress=progress, keep_hits=True, on_chunk=on_chunk)
        doc = result_document(ev, options, accs, timing, per_class=False)
        hits = {key: acc.hits()[0] for key, acc in accs.items()}
        labels, ids = ev.query_labels, ev.query.ids
        finish_sweep_document(doc, options.k_values, options.methods, hits, options.alpha)
        if writer is not None:
            writer.commit(doc)
            doc["partial_path"] = str(partial_path)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    best_hits = {m: (b["k"], hits[(m, b["k"])]) for m, b in doc["best"].items()}
    return SweepResult(doc, best_hits=best_hits, query_labels=labels, query_ids=ids)


def finish_sweep_document(doc: dict, k_values, methods, hits: dict, alpha: float) -> dict:
    """Sweep's additions to a result document: k values, rows by method then k, the best k (and ties)."""
    doc["k_values"] = list(k_values)
    doc["results"] = sorted(doc["results"], key=lambda r: (list(methods).index(r["method"]), r["k"]))
    doc["best"] = best_per_method(doc["results"], hits, alpha)
    return doc
