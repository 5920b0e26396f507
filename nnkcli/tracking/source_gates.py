"""``nnk evaluate``'s gates: every source named or found in this run is checked.

For each source of the run (evaluated now, or already recorded with the same
parameter set), its entry of this run's parameter set is compared with the best of
the *other* sources' entries of that set — whatever their steps or file times, so a
bad checkpoint evaluated after a newer good one still fails. The failure message
names the source.

- ``max_drop`` (``--fail-on-regression PTS``): fail when the source's best top-1 is more
  than PTS points below the best other entry's. With ``significant`` the drop must
  also be significant: McNemar's exact test on the two entries' per-query top-1
  correctness (``nnkcli.tracking.sidecar``), p < ``alpha``. Entries whose queries differ,
  or that have no per-query record, are not paired: that is said, and the plain gate
  applies.
- ``metric`` (``--gate-metric``): ``max_drop`` gates a quality metric recorded by
  ``--quality`` instead of the top-1 (``nnkcli.tracking.quality_entries``): a source fails
  when its value is worse than the best other entry's by more than ``max_drop``, in the
  metric's direction (``GATE_METRICS``) and units — points for the leave-one-out
  accuracies, RankMe's own units (an effective rank), the interpolation error's (0..1).
- ``min_top1``/``min_top5``: absolute thresholds on the source's own entry.

``gate_run`` is the whole step for the outcomes of ``evaluate_sources`` (what ``nnk
evaluate --min-top1 ...`` does after recording); ``check_source_gates`` gates entries
of one parameter set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnkcli.evaluation.options import DEFAULT_ALPHA
from nnkcli.numerics.metrics import warn_fraction_gates
from nnkcli.numerics.stats import mcnemar_exact
from nnkcli.tracking import sidecar
from nnkcli.tracking.history import History, read_history
from nnkcli.tracking.paramsets import entries_of, entry_key
from nnkcli.tracking.quality_entries import quality_value
from nnkcli.tracking.runner import RunStatus, SourceOutcome
from nnkcli.tracking.views import best_accuracy, describe_entry


@dataclass
class SourceGate:
    """The gates' view of one source of this run."""

    source: str
    sha256: str
    top1: float | None
    top5: float | None = None
    best_other: str | None = None
    best_other_top1: float | None = None
    drop: float | None = None
    p_value: float | None = None
    paired: str | None = None  # "paired", or why the entries could not be paired
    failures: list[str] = field(default_factory=list)
    metric: str | None = None  # a quality metric gated instead of the top-1 (--gate-metric)
    value: float | None = None  # ... its value in this source's entry
    best_other_value: float | None = None  # ... and in the best other entry's

    def to_dict(self) -> dict:
        doc = dict(self.__dict__)
        if self.metric is None:  # the accuracy gate: its document as it has always been
            for name in ("metric", "value", "best_other_value"):
                doc.pop(name)
        return doc


@dataclass
class SourceGateReport:
    """What the gates found: one ``SourceGate`` per source gated, the settings they used.

    ``passed`` is False when any source failed a gate (``failures`` says how, naming
    the source); ``notes`` are what a reader should know (a source not gated, a drop
    not significant, entries that could not be paired).
    """

    method: str
    sources: list[SourceGate]
    notes: list[str] = field(default_factory=list)
    max_drop: float | None = None
    min_top1: float | None = None
    min_top5: float | None = None
    significant: bool = False
    alpha: float = DEFAULT_ALPHA
    metric: str | None = None

    @property
    def failures(self) -> list[str]:
        return [f for s in self.sources for f in s.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        """The report as plain values (the ``gate`` of ``nnk evaluate --format json``)."""
        return {
            "method": self.method,
            "passed": self.passed,
            "fail_on_regression": self.max_drop,
            "significant": self.significant,
            "alpha": self.alpha if self.significant else None,
            "min_top1": self.min_top1,
            "min_top5": self.min_top5,
            **({"gate_metric": self.metric} if self.metric is not None else {}),
            "sources": [s.to_dict() for s in self.sources],
            "notes": list(self.notes),
            "failures": list(self.failures),
        }


#: the outcomes whose entry is gated: a failed source has none recorded
GATED_STATUSES = (RunStatus.EVALUATED, RunStatus.SKIPPED)


def gate_run(
    history_path: str | os.PathLike,
    outcomes: Iterable[SourceOutcome],
    *,
    method: str,
    max_drop: float | None = None,
    min_top1: float | None = None,
    min_top5: float | None = None,
    significant: bool = False,
    alpha: float = DEFAULT_ALPHA,
    history: History | None = None,
    metric: str | None = None,
) -> SourceGateReport:
    """Gate every source of a run of ``evaluate_sources`` against the others in its history.

    Each source evaluated or skipped in the run is gated with its newest entry of the
    run's parameter set (a ``--force`` line wins over an older one), against the best
    of the other sources' entries of that set (see the module's docstring). Failed
    sources are not gated. Nothing is raised for a failed gate: check ``passed``.

    Parameters
    ----------
    history_path : path-like
        The history the run recorded into (its sidecar folder holds the per-query
        results that ``significant`` pairs).
    outcomes : iterable of SourceOutcome
        What ``evaluate_sources`` returned.
    method : str
        The method whose best top-1 (and top-5) is gated, e.g. ``"nnk"``.
    max_drop : float, optional
        Fail a source whose best top-1 is more than this many points below the best
        other source's.
    min_top1, min_top5 : float, optional
        Fail a source whose best top-1 (or the top-5 at that k) is below this percentage.
    significant : bool, default=False
        ``max_drop`` fails only when McNemar's exact test on the same queries gives
        p < ``alpha``.
    alpha : float, default=0.05
    history : History, optional
        ``read_history(history_path)`` when the caller has read it already.
    metric : str, optional
        A quality metric of ``GATE_METRICS`` (``"rankme"``, ``"nnk_interpolation_error"``,
        ``"loo_nnk_top1"``, ``"loo_knn_top1"``) that ``max_drop`` gates instead of the top-1,
        in its own units and direction; None: the top-1. Not with ``significant``.

    Returns
    -------
    SourceGateReport
        One ``SourceGate`` per gated source; ``.passed``, ``.failures``, ``.notes``,
        ``.to_dict()``. No source gated (``sources == []``) when no outcome has an entry.

    Examples
    --------
    >>> outcomes = evaluate_sources(paths, "history.jsonl")  # doctest: +SKIP
    >>> report = gate_run("history.jsonl", outcomes, method="nnk", min_top1=70)  # doctest: +SKIP
    >>> report.passed, report.failures  # doctest: +SKIP
    """
    warn_fraction_gates(min_top1, min_top5)
    check_gate_metric(metric, significant)
    history_path = Path(history_path)
    history = history if history is not None else read_history(history_path)
    by_key: dict[str, list[dict]] = {}
    for outcome in outcomes:
        if outcome.entry is not None and outcome.sha256 is not None and outcome.status in GATED_STATUSES:
            key = entry_key(outcome.entry)
            by_key.setdefault(key, []).append(history.find(outcome.sha256, key) or outcome.entry)
    gates: dict[str, Any] = dict(  # the same gates for the report and each parameter set's part
        max_drop=max_drop, min_top1=min_top1, min_top5=min_top5, significant=significant, alpha=alpha, metric=metric
    )
    report = SourceGateReport(method, [], **gates)
    for key, run_entries in by_key.items():
        part = check_source_gates(
            run_entries,
            entries_of(history.entries, key),
            method=method,
            load_hits=lambda e: sidecar.read(history_path, e.get("hits")),
            **gates,
        )
        report.sources += part.sources
        report.notes += part.notes
    return report


def check_source_gates(
    run_entries: Sequence[dict],
    set_entries: Sequence[dict],
    *,
    method: str,
    max_drop: float | None = None,
    min_top1: float | None = None,
    min_top5: float | None = None,
    significant: bool = False,
    alpha: float = DEFAULT_ALPHA,
    load_hits: Callable[[dict], object] | None = None,
    metric: str | None = None,
) -> SourceGateReport:
    """Gate every entry of ``run_entries`` against the others of ``set_entries``.

    Parameters
    ----------
    run_entries : the entries of this run's sources (one per source, this parameter set).
    set_entries : every source's newest entry of this parameter set (``paramsets.entries_of``).
    load_hits : ``entry -> sidecar.Hits | None`` (needed for ``significant``).
    metric : a quality metric that ``max_drop`` gates instead of the top-1 (see ``gate_run``).
    """
    check_gate_metric(metric, significant)
    report = SourceGateReport(
        method,
        [],
        max_drop=max_drop,
        min_top1=min_top1,
        min_top5=min_top5,
        significant=significant,
        alpha=alpha,
        metric=metric,
    )
    for entry in run_entries:
        name = describe_entry(entry)
        top1, top5 = best_accuracy(entry, method), best_accuracy(entry, method, "top5")
        gate = SourceGate(name, entry["sha256"], top1, top5)
        report.sources.append(gate)
        if metric is not None:
            _metric_regression(gate, entry, set_entries, metric, max_drop, report)
        if top1 is None and metric is not None:
            if min_top1 is not None or min_top5 is not None:
                report.notes.append(f"{name} has no {method} result: --min-top1/--min-top5 not checked")
            continue
        if top1 is None:
            report.notes.append(f"{name} has no {method} result: not gated")
            continue
        others = [
            (value, e)
            for e in set_entries
            if e["sha256"] != entry["sha256"] and (value := best_accuracy(e, method)) is not None
        ]
        if others and metric is None:
            best_top1, best = max(others, key=lambda pair: pair[0])  # max keeps the first on ties
            gate.best_other, gate.best_other_top1 = describe_entry(best), best_top1
            gate.drop = round(best_top1 - top1, 4)
            if max_drop is not None and gate.drop > max_drop:
                failed = True
                if significant:
                    failed = _significant_drop(gate, entry, best, method, alpha, load_hits, report)
                if failed:
                    how = f", McNemar p = {gate.p_value:.4g} < {alpha:g}" if gate.p_value is not None else ""
                    gate.failures.append(
                        f"regression: {method} top-1 of {name} is {top1:.2f}, {gate.drop:.2f} points below the "
                        f"best {best_top1:.2f} of {gate.best_other} (allowed: {max_drop:g}{how})"
                    )
        if min_top1 is not None and top1 < min_top1:
            gate.failures.append(f"{method} top-1 of {name} is {top1:.2f}, below --min-top1 {min_top1:g}")
        if min_top5 is not None and (top5 is None or top5 < min_top5):
            shown = "not recorded" if top5 is None else f"{top5:.2f}"
            gate.failures.append(f"{method} top-5 of {name} is {shown}, below --min-top5 {min_top5:g}")
    return report


def _significant_drop(gate, entry, best, method, alpha, load_hits, report) -> bool:
    """Whether the drop is significant; falls back to the plain gate (True) when not paired."""
    mine = load_hits(entry) if load_hits else None
    theirs = load_hits(best) if load_hits else None
    if mine is None or theirs is None:
        return _not_paired(gate, report, "no per-query results recorded")
    if method not in mine.by_method or method not in theirs.by_method:
        return _not_paired(gate, report, f"no per-query {method} results recorded")
    reason = mine.paired_with(theirs)
    if reason is not None:
        return _not_paired(gate, report, reason)
    a = theirs.by_method[method][1]  # the best other entry: A
    b = mine.by_method[method][1]
    gate.paired = "paired"
    gate.p_value = mcnemar_exact(int((a & ~b).sum()), int((b & ~a).sum()))
    if gate.p_value >= alpha:
        report.notes.append(
            f"{gate.source}: the drop of {gate.drop:.2f} points is not significant "
            f"(McNemar p = {gate.p_value:.4g} >= {alpha:g})"
        )
        return False
    return True


def _not_paired(gate, report, reason: str) -> bool:
    """Note why the entries cannot be paired; the plain regression gate then applies (True: the drop fails)."""
    gate.paired = reason
    report.notes.append(
        f"{gate.source} and {gate.best_other} are not paired ({reason}): the plain regression gate applies"
    )
    return True


def check_gate_metric(metric: str | None, significant: bool) -> None:
    """Refuse a metric that is not in ``GATE_METRICS``, and ``significant`` with a metric (``ValueError``)."""
    if metric is None:
        return
    from nnkcli.evaluation.quality import GATE_METRICS

    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric must be one of {', '.join(GATE_METRICS)}; got {metric!r}")
    if significant:
        raise ValueError("significant pairs per-query top-1 results: it gates the top-1, not a quality metric")


def _metric_regression(gate: SourceGate, entry: dict, set_entries, metric: str, max_drop, report) -> None:
    """Gate ``metric`` of ``entry`` against the best other entry: worse by more than ``max_drop`` fails."""
    from nnkcli.evaluation.quality import GATE_METRICS

    lower = GATE_METRICS[metric] == "lower"
    gate.metric, gate.value = metric, quality_value(entry, metric)
    if gate.value is None:
        report.notes.append(f"{gate.source} has no {metric} recorded: not gated on it")
        return
    others = [
        (value, e)
        for e in set_entries
        if e["sha256"] != entry["sha256"] and (value := quality_value(e, metric)) is not None
    ]
    if not others:
        return
    # the best is the lowest or the highest; min/max keep the first on ties
    best_value, best = (min if lower else max)(others, key=lambda pair: pair[0])
    gate.best_other, gate.best_other_value = describe_entry(best), best_value
    gate.drop = round((gate.value - best_value) if lower else (best_value - gate.value), 6)
    if max_drop is not None and gate.drop > max_drop:
        how = "above" if lower else "below"
        gate.failures.append(
            f"regression: {metric} of {gate.source} is {gate.value:.4g}, {gate.drop:.4g} {how} the best "
            f"{best_value:.4g} of {gate.best_other} ({GATE_METRICS[metric]} is better; allowed: {max_drop:g})"
        )
