"""Accuracy bookkeeping over streamed query chunks: top-1, top-5, per-class, balanced.

Accuracies are percentages (0-100), each with an interval at ``confidence`` (95 %):
Wilson score intervals for top-1, top-5 and per-class top-1, a stratified bootstrap
for the balanced accuracy (see ``nnkcli.numerics.stats``). Queries labelled -1 are
predicted but do not count towards any accuracy; they are counted as ``n_unlabelled``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from nnkcli.errors import GateFailed, InputError, OptionConflict, SettingName
from nnkcli.numerics import stats
from nnkcli.numerics.scores import METHODS

logger = logging.getLogger("nnkcli")

GATE_METHODS = ("all", *METHODS)
#: the two settings of the gate-method rule (``check_gate_method``), by their Python and option names
_GATE_NAMES = {
    "gate_method": SettingName("gate_method", "--gate-method"),
    "methods": SettingName("methods", "--method"),
}


@dataclass
class Accumulator:
    """Running counts for one (method, k)."""

    method: str
    k: int
    n_classes: int
    temperature: float | None = None  # kNN rows: the temperature T of exp(s / T)
    solver: str | None = None  # NNK rows: "exact" or "pruning"
    n_queries: int = 0
    n_unlabelled: int = 0
    top1_hits: int = 0
    top5_hits: int = 0
    class_total: np.ndarray = field(init=False, repr=False)  # (C,) int64: labelled queries per true class
    class_hits: np.ndarray = field(init=False, repr=False)  # (C,) int64: top-1 hits per true class
    support: list = field(default_factory=list, repr=False)
    keep_hits: bool = False  # keep per-query correctness (paired tests across k, methods, runs)
    _hit1: list = field(default_factory=list, repr=False)
    _hit5: list = field(default_factory=list, repr=False)
    kkt_failures: int = 0  # pruning solver: queries whose weights fail the exact KKT certificate
    objective_gap_sum: float = 0.0  # pruning solver: sum over queries of objective - exact objective
    n_solved: int = 0
    kkt_tol: float | None = None

    def __post_init__(self):
        self.class_total = np.zeros(self.n_classes, dtype=np.int64)
        self.class_hits = np.zeros(self.n_classes, dtype=np.int64)

    def update(
        self, top: np.ndarray, labels: np.ndarray, support: np.ndarray | None = None, solver_stats: tuple | None = None
    ) -> None:
        """Add a chunk.

        Parameters
        ----------
        top : ndarray, shape (B, >=1), int64 — predicted classes, best first, -1 = none
        labels : ndarray, shape (B,), int64 — true classes, -1 = unlabelled
        support : ndarray, shape (B,), optional — NNK support sizes
        solver_stats : (kkt failures, sum of objective gaps, queries, kkt tol), optional — pruning solver
        """
        if solver_stats is not None:
            self.kkt_failures += int(solver_stats[0])
            self.objective_gap_sum += float(solver_stats[1])
            self.n_solved += int(solver_stats[2])
            self.kkt_tol = float(solver_stats[3])
        labelled = labels >= 0
        self.n_unlabelled += int((~labelled).sum())
        top, y = top[labelled], labels[labelled]
        self.n_queries += int(y.size)
        hit1 = top[:, 0] == y
        hit5 = (top[:, :5] == y[:, None]).any(axis=1)
        self.top1_hits += int(hit1.sum())
        self.top5_hits += int(hit5.sum())
        self.class_total += np.bincount(y, minlength=self.n_classes)[: self.n_classes]
        self.class_hits += np.bincount(y[hit1], minlength=self.n_classes)[: self.n_classes]
        if self.keep_hits:
            self._hit1.append(hit1)
            self._hit5.append(hit5)
        if support is not None:
            # over all queries, labelled or not: it describes the solver, not accuracy
            self.support.append(np.asarray(support))

    def hits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per labelled query, in query order: (top-1 correct, top-5 correct), bool (n_queries,).

        Only kept when the accumulator was made with ``keep_hits=True``.
        """
        if not self.keep_hits:
            raise ValueError("per-query hits were not kept (keep_hits=False)")
        empty = np.zeros(0, dtype=bool)
        return (
            np.concatenate(self._hit1) if self._hit1 else empty,
            np.concatenate(self._hit5) if self._hit5 else empty,
        )

    def result(
        self,
        *,
        per_class: bool = False,
        class_names: list[str] | None = None,
        confidence: float = stats.DEFAULT_CONFIDENCE,
    ) -> dict:
        """The JSON-able result row (accuracies in %, NaN when nothing was labelled).

        ``top1_ci``, ``top5_ci`` and ``balanced_accuracy_ci`` are ``[low, high]`` in % at
        ``confidence``.
        """
        n = self.n_queries
        row: dict = {
            "method": self.method,
            "k": self.k,
            **({"temperature": self.temperature} if self.temperature is not None else {}),
            **({"solver": self.solver} if self.solver is not None else {}),
            "top1": _pct(self.top1_hits, n),
            "top1_ci": stats.wilson_percent(self.top1_hits, n, confidence),
            "top5": _pct(self.top5_hits, n),
            "top5_ci": stats.wilson_percent(self.top5_hits, n, confidence),
            "balanced_accuracy": self.balanced_accuracy(),
            "balanced_accuracy_ci": self.balanced_interval(confidence),
            "n_queries": n,
            "n_unlabelled": self.n_unlabelled,
        }
        if self.method == "nnk" and self.support:
            s = np.concatenate(self.support)
            row["support_mean"] = round(float(s.mean()), 3) if s.size else None
            row["support_median"] = float(np.median(s)) if s.size else None
        if self.n_solved:
            row["kkt_failure_fraction"] = round(self.kkt_failures / self.n_solved, 6)
            row["kkt_tol"] = self.kkt_tol
            row["objective_gap_mean"] = float(f"{self.objective_gap_sum / self.n_solved:.6g}")
        if per_class:
            names = class_names or [str(c) for c in range(self.n_classes)]
            row["per_class"] = {
                names[c]: {
                    "n": int(self.class_total[c]),
                    "top1": _pct(self.class_hits[c], self.class_total[c]),
                    "top1_ci": stats.wilson_percent(self.class_hits[c], self.class_total[c], confidence),
                }
                for c in range(self.n_classes)
                if self.class_total[c] > 0
            }
        return row

    def balanced_accuracy(self) -> float:
        present = self.class_total > 0
        if not present.any():
            return float("nan")
        return round(float(np.mean(self.class_hits[present] / self.class_total[present]) * 100.0), 4)

    def balanced_interval(self, confidence: float = stats.DEFAULT_CONFIDENCE) -> list:
        """Stratified-bootstrap interval of the balanced accuracy, ``[low, high]`` in %."""
        low, high = stats.balanced_bootstrap_interval(self.class_hits, self.class_total, confidence)
        return [_round(100.0 * low), _round(100.0 * high)]


def _round(x: float) -> float:
    return round(x, 4) if x == x else float("nan")


def _pct(hits: int, n: int) -> float:
    return round(100.0 * hits / n, 4) if n else float("nan")


def check_gate_value(name: str, value: float | None) -> float | None:
    """A gate threshold must be a finite percentage in [0, 100] (``ValueError`` otherwise)."""
    if value is None:
        return None
    v = float(value)
    if not (np.isfinite(v) and 0.0 <= v <= 100.0):
        raise ValueError(f"{name} must be a finite percentage in [0, 100], got {value!r}")
    return v


def fraction_gate_warning(name: str, value: float | None) -> str | None:
    """What to say about a gate threshold in (0, 1]: most likely a fraction where a percentage is meant.

    ``--min-top1 0.8`` is a gate that no run can fail (an accuracy of 0.8 %); 1 may mean 1 %, but
    is warned about too. None when ``value`` is None, 0 or above 1.
    """
    if value is None or not 0.0 < value <= 1.0:
        return None
    return f"{name} {value:g} is a percentage (0-100), not a fraction: did you mean {100 * value:g}?"


def warn_fraction_gates(min_top1: float | None, min_top5: float | None) -> None:
    """Log one warning per gate threshold in (0, 1] (``fraction_gate_warning``); the run goes on."""
    for name, value in (("--min-top1", min_top1), ("--min-top5", min_top5)):
        text = fraction_gate_warning(name, value)
        if text is not None:
            logger.warning(text)


def check_gate_method(gate_method: str | None, methods) -> None:
    """A gated method must be among the ``methods`` run (``"all"``/None: every one): an ``OptionConflict``.

    Every command with a gate asks this before any work (``merge``: of its parts' methods).
    """
    if gate_method in ("all", None) or gate_method in methods:
        return
    run = "both" if set(methods) == set(METHODS) else ",".join(methods)
    raise OptionConflict(
        "{gate_method} {gate} is not among the methods run ({methods} {run})", _GATE_NAMES, gate=gate_method, run=run
    )


def check_gates(
    rows: list[dict], *, min_top1: float | None = None, min_top5: float | None = None, gate_method: str = "all"
) -> None:
    """Raise GateFailed naming every row whose accuracy is below a threshold.

    ``rows`` are result rows (one per method, e.g. the best k of each method);
    ``gate_method`` (``all``, ``nnk`` or ``knn``) says which methods' rows are gated.
    A gate on results without labelled queries is an input error, not a pass. A threshold in
    (0, 1] (a fraction where a percentage is meant) is logged as a warning, and checked as given.
    """
    if gate_method not in GATE_METHODS:
        raise ValueError(f"gate_method must be one of {GATE_METHODS}, got {gate_method!r}")
    min_top1 = check_gate_value("--min-top1", min_top1)
    min_top5 = check_gate_value("--min-top5", min_top5)
    warn_fraction_gates(min_top1, min_top5)
    if gate_method != "all":
        if min_top1 is not None or min_top5 is not None:
            check_gate_method(gate_method, list(dict.fromkeys(row["method"] for row in rows)))
        rows = [row for row in rows if row["method"] == gate_method]
    failures = []
    for key, threshold in (("top1", min_top1), ("top5", min_top5)):
        if threshold is None:
            continue
        for row in rows:
            value = row.get(key)
            if value is None or value != value:  # NaN: nothing labelled
                raise InputError(
                    f"--min-{key} needs labelled queries, but the query split has none",
                    hint="extract the query split with labels, or drop the gate",
                )
            if value < threshold:
                failures.append(f"{row['method']} {key} {value:.2f} < {threshold:g} (k={row['k']})")
    if failures:
        raise GateFailed(
            "quality gate failed: " + "; ".join(failures),
            hint="the results above were still written; lower the threshold or investigate the features",
        )
