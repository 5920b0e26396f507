"""What an experiment tracker (Weights & Biases, MLflow) receives from a result document.

A result document gives one :class:`TrackedRun` per evaluated source: a sweep or a
classification of a store (``SweepResult.to_dict()``, ``ClassifyResult.to_dict()``), one
history entry, or ``{"entries": [...]}`` (the lines of ``nnk evaluate`` and ``nnk history``).
This module only reads documents (no tracker library, no I/O); the writers are
``nnkcli.integrations.wandb_export`` and ``nnkcli.integrations.mlflow_export``.

Metrics, for each method ``m`` (``nnk``, ``knn``)::

    m/top1@K, m/top5@K           each k of the sweep (K the k; ``_T<t>`` appended when the
                                 method was run at several temperatures)
    m/top1@K_low, m/top1@K_high  the interval of top-1 (--confidence, Wilson)
    m/top1, m/top5, m/k          the chosen k: selected on train with --select-on, else the
    m/top1_low, m/top1_high      best on the query split (what a history records as best)
    m/temperature                its temperature, where the method has one
    m/best_top1, m/best_k        with --select-on: the best on the query split (optimistic)
    quality/<metric>             ``nnk evaluate --quality``: rankme, alpha_req, ...
    linear/top1, linear/top5     ``nnk report``: the linear probe (its interval as
    linear/top1_low, _high       ``_low``/``_high``, its chosen C as ``linear/c``)
    linear/c

Accuracies are percentages (0-100), as in every nnkcli document. A run's identity
(:attr:`TrackedRun.key`) is what a re-run must find again: a history entry's sha256 and
parameter set (the history's own key), a store document's absolute path, splits, step,
kind and parameter set.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnkcli.tracking.paramsets import entry_key, parameter_key

#: the document kinds a tracked run comes from
KINDS = ("sweep", "classify", "evaluate")


@dataclass(frozen=True)
class TrackedRun:
    """One evaluated source as a tracker run.

    Attributes
    ----------
    key : str
        The run's identity (hex): the same source evaluated the same way gets the same key.
    name : str
        Display name: ``step N`` where the step is known, else the source's file name.
    kind : str
        ``sweep``, ``classify`` or ``evaluate`` (a history entry).
    step : int or None
        The training step (epoch, global step) of the features, where known.
    metrics : dict of str to float
        Finite values only (see the module docstring for the names).
    params : dict of str to JSON value
        Flat: nested settings joined with dots (``model.model``).
    tags : dict of str to str
        ``nnk.key``, ``nnk.kind``, ``nnk.source`` (and ``nnk.sha256``, ``nnk.params_key``).
    group : str or None
        The parameter set (runs of one set are one series).
    sweep : dict or None
        A sweep-shaped document to draw accuracy versus k from (None: one k, nothing to draw).
    figure : str or None
        An existing figure of this run (``--plot``) to attach instead of drawing one.
    """

    key: str
    name: str
    kind: str
    step: int | None
    metrics: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    sweep: dict | None = None
    figure: str | None = None

    def run_id(self, namespace: str, prefix: str = "nnk-", length: int = 24) -> str:
        """A deterministic id of this run within ``namespace`` (a project, an experiment)."""
        digest = hashlib.sha256(f"{namespace}\0{self.key}".encode()).hexdigest()
        return prefix + digest[:length]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts joined with dots; None and empty lists dropped (a tracker shows them as noise)."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, key + "."))
        elif value is None or value == [] or value == ():
            continue
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def _point_metrics(metrics: dict, method: str, point: dict, prefix: str = "") -> None:
    for name in ("top1", "top5", "k", "temperature"):
        if _finite(point.get(name)):
            metrics[f"{method}/{prefix}{name}"] = float(point[name])
    ci = point.get("top1_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) for v in ci):
        metrics[f"{method}/{prefix}top1_low"], metrics[f"{method}/{prefix}top1_high"] = map(float, ci)


def accuracy_metrics(results: list, chosen: dict, best_on_query: dict | None = None) -> dict[str, float]:
    """The metrics of one sweep's rows (``results``) and chosen k per method (``chosen``).

    ``best_on_query``: with a selection on train, the optimistic best, as ``m/best_top1``, ``m/best_k``.
    """
    metrics: dict[str, float] = {}
    temps: dict[str, set] = {}
    for row in results:
        temps.setdefault(row.get("method"), set()).add(row.get("temperature"))
    for row in results:
        method, k = row.get("method"), row.get("k")
        if not isinstance(method, str) or not _finite(k):
            continue
        at = f"@{int(k)}"
        if len(temps[method]) > 1 and _finite(row.get("temperature")):
            at += f"_T{row['temperature']:g}"
        for name in ("top1", "top5"):
            if _finite(row.get(name)):
                metrics[f"{method}/{name}{at}"] = float(row[name])
        ci = row.get("top1_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) for v in ci):
            metrics[f"{method}/top1{at}_low"], metrics[f"{method}/top1{at}_high"] = map(float, ci)
    for method, point in (chosen or {}).items():
        if isinstance(point, dict):
            _point_metrics(metrics, method, point)
    for method, point in (best_on_query or {}).items():
        if isinstance(point, dict):
            for name in ("top1", "k"):
                if _finite(point.get(name)):
                    metrics[f"{method}/best_{name}"] = float(point[name])
    return metrics


def quality_metrics(quality) -> dict[str, float]:
    """``quality/<metric>`` of a quality summary (None and NaN: not measured, left out)."""
    if not isinstance(quality, dict):
        return {}
    return {f"quality/{name}": float(v) for name, v in quality.items() if _finite(v)}


def _classify_chosen(results: list) -> dict:
    """A classification's one row per method (a method run at several temperatures: none chosen)."""
    by_method: dict[str, list] = {}
    for row in results:
        by_method.setdefault(row.get("method"), []).append(row)
    return {m: rows[0] for m, rows in by_method.items() if isinstance(m, str) and len(rows) == 1}


def step_of_path(path: str | None) -> int | None:
    """The step in a store's file name (``epoch_30.h5``, ``step-1000.h5``), as ``nnk evaluate`` reads it."""
    if not path:
        return None
    from nnkcli.tracking.sources import step_from_name

    found = step_from_name(Path(path).name)
    return found[0] if found is not None else None


def _name(step: int | None, source: str | None) -> str:
    if step is not None:
        return f"step {step}"
    return Path(source).name if source else "nnk"


def document_run(doc: dict, *, step: int | None = None) -> TrackedRun:
    """The run of a sweep or classify document of a store (``step``: given, else read from its name)."""
    results = list(doc.get("results") or [])
    kind = "sweep" if "best" in doc or "k_values" in doc else "classify"
    store = doc.get("store")
    source = os.path.abspath(store) if store else None
    step = step if step is not None else step_of_path(store)
    scoring = dict(doc.get("parameters") or {})
    data = {"train_split": doc.get("train_split"), "query_split": doc.get("query_split")}
    if kind == "sweep":
        selected = doc.get("selected")
        chosen = selected or doc.get("best") or {}
        metrics = accuracy_metrics(results, chosen, doc.get("best") if selected else None)
    else:
        metrics = accuracy_metrics(results, _classify_chosen(results))
    metrics.update(quality_metrics((doc.get("quality") or {}).get("summary", doc.get("quality"))))
    linear = doc.get("linear")
    if isinstance(linear, dict):  # nnk report's probe beside the sweep
        _point_metrics(metrics, "linear", {name: linear.get(name) for name in ("top1", "top5", "top1_ci")})
        if _finite(linear.get("c")):
            metrics["linear/c"] = float(linear["c"])
    params_key = parameter_key({**scoring, **data})
    key = hashlib.sha256(f"{kind}\0{source}\0{step}\0{params_key}".encode()).hexdigest()
    sizes = {n: doc.get(n) for n in ("n_train", "n_queries", "n_classes")}
    params = flatten({**scoring, **data, **sizes, "store": source, "step": step, "kind": kind})
    tags = {"nnk.key": key, "nnk.kind": kind, "nnk.source": source or "", "nnk.params_key": params_key}
    figure = doc.get("plot") if isinstance(doc.get("plot"), str) else None
    drawable = kind == "sweep" and len({r.get("k") for r in results}) > 1
    return TrackedRun(
        key,
        _name(step, source),
        kind,
        step,
        metrics,
        params,
        tags,
        group=f"params-{params_key}",
        sweep=doc if drawable else None,
        figure=figure,
    )


def entry_sweep(entry: dict) -> dict | None:
    """A history entry as a sweep document (``nnkcli.plots.plot_sweep`` draws it), None with one k."""
    results = entry.get("results") or []
    if len({r.get("k") for r in results if isinstance(r, dict)}) < 2:
        return None
    parameters = entry.get("parameters") or {}
    selected = entry.get("selection") is not None
    return {
        "store": str(entry.get("store") or entry.get("source") or ""),
        "train_split": str(parameters.get("train_split", "train")),
        "query_split": str(parameters.get("query_split", "val")),
        "n_train": entry.get("n_train") or 0,
        "n_queries": entry.get("n_queries") or 0,
        "parameters": parameters,
        "results": results,
        "best": (entry.get("best_on_query_split") if selected else entry.get("best")) or {},
        **({"selected": entry.get("best") or {}} if selected else {}),
    }


def entry_run(entry: dict) -> TrackedRun:
    """The run of one history entry (``nnk evaluate``, ``nnk history``): keyed by sha256 and parameter set."""
    params_key = entry_key(entry)
    sha = str(entry.get("sha256") or "")
    key = hashlib.sha256(f"evaluate\0{sha}\0{params_key}".encode()).hexdigest()
    step = entry.get("step") if _finite(entry.get("step")) else None
    selected = entry.get("selection") is not None
    metrics = accuracy_metrics(
        entry.get("results") or [], entry.get("best") or {}, entry.get("best_on_query_split") if selected else None
    )
    metrics.update(quality_metrics(entry.get("quality")))
    source = str(entry.get("source") or "")
    params = flatten(
        {
            **(entry.get("parameters") or {}),
            **{n: entry.get(n) for n in ("n_train", "n_queries", "n_classes", "kind", "sha256", "nnkcli_version")},
            "source": source,
            "step": step,
        }
    )
    tags = {
        "nnk.key": key,
        "nnk.kind": "evaluate",
        "nnk.source": source,
        "nnk.sha256": sha,
        "nnk.params_key": params_key,
    }
    return TrackedRun(
        key,
        _name(step, source),
        "evaluate",
        int(step) if step is not None else None,
        metrics,
        params,
        tags,
        group=f"params-{params_key}",
        sweep=entry_sweep(entry),
    )


def tracked_runs(doc: dict, *, step: int | None = None) -> list[TrackedRun]:
    """The runs of a result document: ``{"entries": [...]}``, one history entry, or a store's sweep/classify;
    ``{"documents": [...]}`` (``nnk report``: one store document each) gives the runs of each.

    ``step`` (a store document only): the training step of its features.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a result document is a dict, got {type(doc).__name__}")
    if isinstance(doc.get("documents"), list):
        return [run for d in doc["documents"] for run in tracked_runs(d, step=step)]
    if isinstance(doc.get("entries"), list):
        return [entry_run(e) for e in doc["entries"] if isinstance(e, dict)]
    if "sha256" in doc and "parameters" in doc:
        return [entry_run(doc)]
    if isinstance(doc.get("results"), list):
        return [document_run(doc, step=step)]
    raise ValueError("not a result document: no 'results' (sweep, classify) and no 'entries' (history lines)")
