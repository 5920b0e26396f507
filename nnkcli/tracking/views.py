"""Views of a history: the best result of an entry, training order, the rows of ``nnk history``,
each method's best entry, and ``history_view``: one parameter set of a history, as a document."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnkcli.numerics.scores import METHODS
from nnkcli.tracking.history import History
from nnkcli.tracking.paramsets import ParamSet, describe_parameters, entries_of, parameter_sets, pick_parameter_set
from nnkcli.tracking.quality_entries import quality_metrics_of, quality_row


def best_accuracy(entry: dict, method: str, metric: str = "top1") -> float | None:
    """An accuracy (percent) of ``method`` at its best k recorded in an entry, or None.

    ``metric="top1"``: the best top-1; ``metric="top5"``: the top-5 at that same best k.
    """
    best = (entry.get("best") or {}).get(method)
    if not isinstance(best, dict):
        return None
    value = best.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def best_k(entry: dict, method: str) -> int | None:
    best = (entry.get("best") or {}).get(method)
    return best.get("k") if isinstance(best, dict) else None


def order_entries(entries: Sequence[dict]) -> list[dict]:
    """Entries in training order: by step; those without a step after them, by time.

    "Time" is the source file's modification time (when the checkpoint was
    written), then the evaluation's start, then the line number: sources copied
    around keep their order as long as at least one of these is meaningful.
    """

    def key(entry: dict):
        step = entry.get("step")
        has_step = isinstance(step, int) and not isinstance(step, bool)
        return (
            0 if has_step else 1,
            step if has_step else 0,
            str(entry.get("mtime") or ""),
            str(entry.get("started_at") or ""),
            entry.get("_line", 0),
        )

    return sorted(entries, key=key)


def entry_methods(entries: Sequence[dict]) -> list[str]:
    """Methods with a recorded best in any entry, ``nnk`` and ``knn`` first."""
    seen: list[str] = []
    for entry in entries:
        for method in entry.get("best") or {}:
            if method not in seen:
                seen.append(method)
    preferred = [m for m in METHODS if m in seen]
    return preferred + sorted(m for m in seen if m not in preferred)


def history_rows(
    entries: Sequence[dict], methods: Sequence[str] | None = None, quality_metrics: Sequence[str] | None = None
) -> list[dict]:
    """One row per entry, in training order, for ``nnk history``.

    Each row has ``step``, ``source`` (file name), ``sha256`` (12 digits),
    ``evaluated_at`` and, per method ``m``: ``m_top1``, ``m_k``, ``m_delta_prev``
    (change from the previous row that has ``m``) and ``m_delta_best`` (this row
    minus the best of the whole history, so 0 for the best and negative otherwise),
    and ``best``: the methods for which this row is the best (first one on ties),
    space-separated. Where entries recorded quality metrics (``nnk evaluate --quality``),
    each metric is a column named as the metric (``rankme`` ...), None where not recorded.
    """
    ordered = order_entries(entries)
    methods = list(methods) if methods is not None else entry_methods(ordered)
    metrics = list(quality_metrics) if quality_metrics is not None else quality_metrics_of(ordered)
    best_index = _best_indices(ordered, methods)
    # each method's best entry has a value for it (that is how it was chosen)
    best_value = {m: v for m, i in best_index.items() if (v := best_accuracy(ordered[i], m)) is not None}
    rows = []
    previous: dict[str, float] = {}
    for i, entry in enumerate(ordered):
        row = {
            "step": entry.get("step"),
            "source": Path(str(entry.get("source", ""))).name,
            "sha256": entry["sha256"][:12],
            "evaluated_at": entry.get("finished_at"),
        }
        for m in methods:
            value = best_accuracy(entry, m)
            row[f"{m}_top1"] = value
            ci = ((entry.get("best") or {}).get(m) or {}).get("top1_ci")
            row[f"{m}_top1_ci"] = ci if isinstance(ci, list) and len(ci) == 2 else None
            row[f"{m}_k"] = best_k(entry, m) if value is not None else None
            row[f"{m}_delta_prev"] = value - previous[m] if value is not None and m in previous else None
            row[f"{m}_delta_best"] = value - best_value[m] if value is not None else None
            if value is not None:
                previous[m] = value
        row["best"] = " ".join(m for m in methods if best_index.get(m) == i)
        row.update(quality_row(entry, metrics))
        rows.append(row)
    return rows


def _best_indices(ordered: Sequence[dict], methods: Sequence[str]) -> dict[str, int]:
    """method -> index in ``ordered`` of its highest best top-1 (the first one on ties)."""
    best_index: dict[str, int] = {}
    best_value: dict[str, float] = {}
    for i, entry in enumerate(ordered):
        for m in methods:
            value = best_accuracy(entry, m)
            if value is not None and (m not in best_value or value > best_value[m]):
                best_value[m], best_index[m] = value, i
    return best_index


def best_entries(entries: Sequence[dict], methods: Sequence[str] | None = None) -> dict[str, dict]:
    """Each method's best entry: the one with the highest best top-1 of that method.

    On ties the first in training order (``order_entries``) wins, as the ``best``
    column of ``history_rows`` marks it. Methods that no entry has a finite top-1 for
    are left out.

    Parameters
    ----------
    entries : the history's entries (one parameter set: ``paramsets.entries_of``).
    methods : the methods to look at (default: ``entry_methods(entries)``), in the order returned.

    Returns
    -------
    dict
        method -> the entry itself (the history line's dict).
    """
    ordered = order_entries(entries)
    methods = list(methods) if methods is not None else entry_methods(ordered)
    index = _best_indices(ordered, methods)
    return {m: ordered[index[m]] for m in methods if m in index}


def best_summary(entries: Sequence[dict], methods: Sequence[str] | None = None) -> dict[str, dict]:
    """``best_entries`` as plain values: method -> ``{"source", "sha256", "step", "top1", "k"}``.

    ``source`` is the path recorded in the entry, ``sha256`` the whole hash, ``top1``
    (percent) and ``k`` the method's best in that entry; what ``nnk history --format
    json`` prints under ``best``.
    """
    return {
        m: {
            "source": entry.get("source"),
            "sha256": entry["sha256"],
            "step": entry.get("step"),
            "top1": best_accuracy(entry, m),
            "k": best_k(entry, m),
        }
        for m, entry in best_entries(entries, methods).items()
    }


def describe_entry(entry: dict) -> str:
    name = Path(str(entry.get("source", "?"))).name
    step = entry.get("step")
    return f"{name} (step {step})" if step is not None else name


@dataclass
class HistoryView:
    """One parameter set of a history, as ``nnk history`` shows it.

    ``entries`` are the set's entries, one per source (the newest line), in file order;
    ``ordered`` the same in training order; ``rows`` one per entry (``history_rows``);
    ``sets`` every parameter set of the history, ``chosen`` the one shown (None: an empty
    history).
    """

    history: History
    sets: list[ParamSet]
    chosen: ParamSet | None
    entries: list[dict]
    methods: list[str]
    rows: list[dict]
    quality_metrics: list[str] = field(default_factory=list)

    @property
    def ordered(self) -> list[dict]:
        return order_entries(self.entries)

    @property
    def others(self) -> list[ParamSet]:
        """The parameter sets not shown."""
        return [s for s in self.sets if self.chosen is None or s.key != self.chosen.key]

    def to_dict(self) -> dict:
        """The view as plain values (``nnk history --format json``, before ``schema_version``)."""
        chosen = self.chosen
        return {
            "history": str(self.history.path),
            "n_entries": len(self.rows),
            "parameter_set": (
                {"number": chosen.number, "key": chosen.key, "parameters": chosen.parameters}
                if chosen is not None
                else None
            ),
            "other_parameter_sets": [{"number": s.number, "key": s.key, "entries": s.n_entries} for s in self.others],
            "methods": list(self.methods),
            **({"quality_metrics": list(self.quality_metrics)} if self.quality_metrics else {}),
            "best": best_summary(self.entries, self.methods),
            "rows": self.rows,
            "malformed": [{"line": b.line_number, "reason": b.reason} for b in self.history.malformed],
        }


def history_view(history: History, param_set: str | None = None) -> HistoryView:
    """The entries of one parameter set of ``history`` and their rows.

    Parameters
    ----------
    history : History
        What ``read_history`` returned.
    param_set : str, optional
        ``"2"`` for the second most recently used set, or a prefix of its key
        (``pick_parameter_set``); default: the most recently used.

    Raises
    ------
    LookupError
        ``param_set`` names no parameter set, or more than one.
    """
    sets = parameter_sets(history.entries)
    chosen = pick_parameter_set(sets, param_set)
    entries = entries_of(history.entries, chosen.key) if chosen is not None else []
    methods, metrics = entry_methods(entries), quality_metrics_of(entries)
    # history_rows finds the same quality metrics in the same entries
    return HistoryView(history, sets, chosen, entries, methods, history_rows(entries, methods), metrics)


def parameter_set_rows(sets: Sequence[ParamSet]) -> list[dict]:
    """One plain row per parameter set (``nnk history --params``), most recently used first."""
    return [
        {
            "number": s.number,
            "key": s.key,
            "entries": s.n_entries,
            "last_used": s.last_used,
            "settings": describe_parameters(s.parameters),
            "parameters": s.parameters,
        }
        for s in sets
    ]
