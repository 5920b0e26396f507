"""The NNK label audit: how much each labelled row's neighbors support its label, leave-one-out.

Every row of a split is scored as a query against the *other* rows of the same split
(``exclude_self``), by the same streaming search and exact NNK solve as ``classify``. With
``theta`` its NNK weights on its k nearest other rows and ``y`` its label:

- **reliability** = (weight on neighbors labelled ``y``) / (total weight), in [0, 1]. The total
  counts every neighbor, unlabelled ones too (as ``nnk_scores`` does): weight on an unlabelled
  row does not support the label. A row whose weights are all zero (no neighbor explains it)
  has reliability 0 and no suggested label (``-1``): nothing supports its label.
- **suggested label**: the class with the largest NNK weight, and that class's **weight share**.
- the **k-NN vote** for comparison: the share of the weighted k-NN vote (``exp(s/T)``, the
  scoring's temperature) that goes to ``y`` among the labelled neighbors, and k-NN's label.

Rows labelled -1 are searched (as neighbors) but not audited. A row is **flagged** when its
reliability is below the threshold (default 0.5: less than half its weight on its own label).
A class's **noise estimate** is the share of its audited rows that are flagged.

The self-test (``inject_noise``) flips ``round(rate * n)`` of the ``n`` labelled rows, seeded, each
to a uniformly chosen other class among the split's labelled classes, in memory
(:meth:`Evaluation.relabel`; the store is never written), audits the flipped labels, and reports
how well ``1 - reliability`` finds the flipped rows: precision among the ``m`` least reliable rows
(``m`` = the flipped count) and AUROC (Mann-Whitney, ties averaged), beside the same for ``1 -``
the k-NN share.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnkcli.errors import InputError, OptionError, SettingName
from nnkcli.evaluation.options import DEFAULT_K, DataOptions, ScoringOptions
from nnkcli.evaluation.scoring import ChunkResult

logger = logging.getLogger("nnkcli")

#: a row is flagged when less than this share of its NNK weight is on its own label
DEFAULT_THRESHOLD = 0.5
#: rows of the document's (and the table's) "worst" list
WORST_ROWS = 10
#: the CSV's columns, in order (``flipped`` and ``original_label`` are added by a self-test)
CSV_COLUMNS = ("row", "id", "label", "reliability", "suggested_label", "suggested_weight", "knn_label", "knn_share")


def check_threshold(value, name: str | SettingName = "threshold") -> float:
    """A flagging threshold in (0, 1]."""
    t = float(value)
    if not 0.0 < t <= 1.0:
        raise OptionError(name, value, "must lie in (0, 1]", hint="0.5 flags rows with under half their weight")
    return t


def check_rate(value, name: str | SettingName = "inject_noise") -> float:
    """A share of labels to flip, in (0, 1)."""
    rate = float(value)
    if not 0.0 < rate < 1.0:
        raise OptionError(name, value, "must lie strictly between 0 and 1", hint="e.g. 0.1 flips 10 % of the labels")
    return rate


# -- the self-test's two measures --------------------------------------------------------------
def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for ``positives``, by the Mann-Whitney formula.

    ``(R - m (m + 1) / 2) / (m (n - m))`` with ``R`` the sum of the positives' ranks among all
    ``n`` scores (ties get their average rank) and ``m`` the number of positives: the chance that
    a random positive scores above a random negative, a tie counting one half.

    Parameters
    ----------
    scores : array-like of float, shape (n,)
    positives : array-like of bool, shape (n,)

    Returns nan when there is no positive or no negative.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    m, n = int(pos.sum()), len(s)
    if m == 0 or m == n:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[pos].sum() - m * (m + 1) / 2) / (m * (n - m)))


def precision_at(order: np.ndarray, positives: np.ndarray, m: int) -> float:
    """Share of positives among the first ``m`` rows of ``order`` (row indices, most suspect first)."""
    return float(np.asarray(positives, dtype=bool)[order[:m]].mean()) if m > 0 else float("nan")


def flip_labels(labels, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * n)`` of the ``n`` labelled entries of ``labels``, each to another class.

    The flipped rows are drawn without replacement; each gets a uniformly chosen class among
    the *other* classes present in ``labels`` (symmetric noise). Seeded by ``seed``.

    Returns
    -------
    noisy : ndarray of int64, shape (n_rows,)
    flipped : ndarray of int64, the flipped rows, ascending
    """
    y = np.asarray(labels, dtype=np.int64)
    labelled = np.flatnonzero(y >= 0)
    present = np.unique(y[labelled])
    m = int(round(check_rate(rate) * len(labelled)))
    if len(present) < 2:
        raise InputError("--inject-noise needs at least two classes among the labelled rows")
    if not 0 < m < len(labelled):
        raise InputError(
            f"--inject-noise {rate:g} flips {m} of {len(labelled)} labelled rows: need at least one flipped "
            "and one kept",
            hint="use a larger split or another rate",
        )
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(labelled, size=m, replace=False))
    # an offset of 1 .. C-1 classes along the present classes: every other class equally likely
    where = np.searchsorted(present, y[flipped])
    offsets = rng.integers(1, len(present), size=m)
    noisy = y.copy()
    noisy[flipped] = present[(where + offsets) % len(present)]
    return noisy, flipped


# -- the per-row numbers -------------------------------------------------------------------------
def _shares(scores: np.ndarray, labels: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, ...]:
    """(own label's share, best class or -1, its share) of class scores (B, C) over ``total`` (B,)."""
    has = total > 0
    safe = np.where(has, total, 1.0)
    rows = np.arange(len(labels))
    own = np.where(has & (labels >= 0), scores[rows, np.maximum(labels, 0)] / safe, 0.0)
    best = np.where(has, scores.argmax(axis=1), -1)
    best_share = np.where(has, scores[rows, np.maximum(best, 0)] / safe, 0.0)
    return own, best, best_share


class _Collector:
    """``evaluate_chunks``'s ``on_chunk``: each row's reliability, suggestion and k-NN vote."""

    def __init__(self, n: int, k: int, labels: np.ndarray, n_classes: int):
        self.k, self.labels, self.n_classes = k, labels, n_classes
        self.reliability = np.zeros(n)
        self.suggested = np.full(n, -1, dtype=np.int64)
        self.suggested_weight = np.zeros(n)
        self.knn_share = np.zeros(n)
        self.knn_label = np.full(n, -1, dtype=np.int64)

    def __call__(self, res: ChunkResult) -> None:
        rows = slice(res.start, res.start + len(res.labels))
        theta = np.asarray(res.by_method_k[("nnk", self.k)].theta, dtype=np.float64)
        ids = np.asarray(res.ids)[:, : self.k]
        nb = np.where(ids >= 0, self.labels[np.maximum(ids, 0)], -1)
        # the weight of each class: one bincount over (row, class) pairs of the labelled neighbors
        b = np.broadcast_to(np.arange(len(theta))[:, None], nb.shape)
        keep = nb >= 0
        flat = b[keep] * self.n_classes + nb[keep]
        per_class = np.bincount(flat, weights=theta[keep], minlength=len(theta) * self.n_classes)
        per_class = per_class.reshape(len(theta), self.n_classes)
        own, best, share = _shares(per_class, res.labels, theta.sum(axis=1))
        self.reliability[rows], self.suggested[rows], self.suggested_weight[rows] = own, best, share
        knn = np.asarray(res.by_method_k[("knn", self.k)].scores, dtype=np.float64)
        knn_own, knn_best, _ = _shares(knn, res.labels, knn.sum(axis=1))
        self.knn_share[rows], self.knn_label[rows] = knn_own, knn_best


# -- the result ----------------------------------------------------------------------------------
@dataclass
class AuditResult:
    """The audit of one split: per-row arrays (audited rows only, least reliable first) and a summary.

    Attributes
    ----------
    rows : ndarray of int64 (m,)
        Row numbers in the split, least reliable first (ties: by row).
    ids : list of str or None
        The rows' sample ids, when the split has ids.
    labels, suggested, knn_label : ndarray of int64 (m,)
        The audited label (after a self-test's flips), NNK's and k-NN's label (-1: none).
    reliability, suggested_weight, knn_share : ndarray of float64 (m,)
    flipped : ndarray of bool (m,) or None
        Self-test only: whether the row's label was flipped; ``original`` its stored label.
    class_names : list of str
    document : dict
        The summary (``to_dict()``): counts, per-class rows, the worst rows, the self-test.
    """

    rows: np.ndarray
    ids: list[str] | None
    labels: np.ndarray
    reliability: np.ndarray
    suggested: np.ndarray
    suggested_weight: np.ndarray
    knn_label: np.ndarray
    knn_share: np.ndarray
    flipped: np.ndarray | None
    original: np.ndarray | None
    class_names: list[str]
    threshold: float
    document: dict

    def to_dict(self) -> dict:
        return self.document

    def table(self, all_rows: bool = True, limit: int | None = None) -> list[dict]:
        """One dict per row (the CSV's columns), least reliable first; ``all_rows=False``: flagged only;
        ``limit``: at most that many rows."""
        names = self.class_names

        def name(c) -> str:
            return names[c] if c >= 0 else ""

        out = []
        for i in range(len(self.rows) if limit is None else min(limit, len(self.rows))):
            if not all_rows and not self.reliability[i] < self.threshold:
                break  # sorted: every later row is at least as reliable
            row = {
                "row": int(self.rows[i]),
                "id": self.ids[i] if self.ids is not None else "",
                "label": name(int(self.labels[i])),
                "reliability": round(float(self.reliability[i]), 6),
                "suggested_label": name(int(self.suggested[i])),
                "suggested_weight": round(float(self.suggested_weight[i]), 6),
                "knn_label": name(int(self.knn_label[i])),
                "knn_share": round(float(self.knn_share[i]), 6),
            }
            if self.flipped is not None and self.original is not None:
                row["flipped"] = int(self.flipped[i])
                row["original_label"] = name(int(self.original[i]))
            out.append(row)
        return out

    def csv_text(self, all_rows: bool = True) -> str:
        columns = list(CSV_COLUMNS) + (["flipped", "original_label"] if self.flipped is not None else [])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.table(all_rows))
        return buf.getvalue()


def _per_class(labels, reliability, threshold, class_names, injected) -> list[dict]:
    out = []
    for c in np.unique(labels):
        mine = labels == c
        n, flagged = int(mine.sum()), int((reliability[mine] < threshold).sum())
        entry = {
            "class": class_names[c],
            "rows": n,
            "flagged": flagged,
            "noise_estimate": round(flagged / n, 6),
            "mean_reliability": round(float(reliability[mine].mean()), 6),
        }
        if injected is not None:  # rows carrying this label wrongly, and their share: what the estimate estimates
            entry["injected"] = int(injected[mine].sum())
            entry["injected_share"] = round(entry["injected"] / n, 6)
        out.append(entry)
    return out


def _self_test(rows, flipped, reliability, knn_share, threshold) -> dict:
    """How well each method's ``1 - share`` finds the flipped rows (the arrays: audited rows, any order)."""
    m = int(flipped.sum())
    measures = {}
    for method, share in (("nnk", reliability), ("knn", knn_share)):
        flagged = share < threshold
        hits = int((flagged & flipped).sum())
        measures[method] = {
            "precision_at_flipped": round(precision_at(np.lexsort((rows, share)), flipped, m), 6),
            "auroc": round(auroc(1.0 - share, flipped), 6),
            "flagged": int(flagged.sum()),
            "flagged_precision": round(hits / int(flagged.sum()), 6) if flagged.any() else None,
            "flagged_recall": round(hits / m, 6),
        }
    return {"flipped": m, **measures}


def audit(
    store_path: str | os.PathLike,
    *,
    split: str = "train",
    k: int = DEFAULT_K,
    threshold: float = DEFAULT_THRESHOLD,
    csv_path: str | os.PathLike | None = None,
    write_all: bool = False,
    inject_noise: float | None = None,
    noise_seed: int = 0,
    options: ScoringOptions | None = None,
    progress_factory: Callable | None = None,
) -> AuditResult:
    """Audit the labels of one split of a store by leave-one-out NNK (see the module's docstring).

    Parameters
    ----------
    store_path : path-like
    split : str, default="train"
        The split audited; its rows are both the queries and the neighbors searched.
    k : int, default=50
    threshold : float, default=0.5
        Rows with reliability below it are flagged.
    csv_path : path-like, optional
        Write the audit table here (atomically): the flagged rows, or every row with ``write_all``.
    write_all : bool, default=False
    inject_noise : float in (0, 1), optional
        Self-test: flip this share of the labelled rows in memory first (``flip_labels``).
    noise_seed : int, default=0
    options : ScoringOptions, optional
        Search and scoring settings (threads, backend, temperature ...); methods, k and
        ``exclude_self`` are the audit's own.
    progress_factory : callable, optional
        ``progress_factory(total, description)``, a context manager yielding ``advance(n)``.

    Raises
    ------
    InputError
        The split has no labels, k is too large for it, or the self-test cannot flip labels.
    """
    from nnkcli.evaluation.setup import open_evaluation
    from nnkcli.evaluation.streaming import evaluate_chunks

    threshold = check_threshold(threshold)
    if inject_noise is not None:
        inject_noise = check_rate(inject_noise)
    if csv_path is not None:
        from nnkcli.storage.atomic import check_can_create

        check_can_create(csv_path, "audit")  # before the index is loaded or built
    opts = (options or ScoringOptions()).replace(methods=("nnk", "knn"), k_values=(k,), exclude_self=True)
    data = DataOptions(train_split=split, query_split=split)
    started = time.perf_counter()
    with open_evaluation(store_path, opts, data, progress_factory) as ev:
        stored = ev.train_labels
        labelled = stored >= 0
        if not labelled.any():
            raise InputError(
                f"split '{split}' has no labels: there is nothing to audit",
                hint="the audit checks labels; 'nnk quality' measures a split without them",
            )
        if not labelled.all():
            logger.warning(f"{int((~labelled).sum())} unlabelled rows of split '{split}' are not audited")
        labels, flipped_rows = stored, None
        if inject_noise is not None:
            labels, flipped_rows = flip_labels(stored, inject_noise, noise_seed)
            ev.relabel(labels)
            logger.info(f"self-test: {len(flipped_rows)} labels flipped in memory (seed {noise_seed})")
        ev.check_k(opts)
        collect = _Collector(ev.train.n, k, labels, ev.n_classes)
        if progress_factory is not None:
            with progress_factory(ev.train.n, "auditing") as advance:
                _, timing = evaluate_chunks(ev, opts, progress=advance, on_chunk=collect)
        else:
            _, timing = evaluate_chunks(ev, opts, on_chunk=collect)
        all_ids = ev.train.ids
        class_names = list(ev.class_names)
        n_rows = int(ev.train.n)

    audited = np.flatnonzero(labelled)
    # least reliable first; ties by row, so the order does not depend on how the rows were chunked
    order = np.lexsort((audited, collect.reliability[audited]))
    rows = audited[order]
    flipped = None
    if flipped_rows is not None:
        flipped = np.zeros(n_rows, dtype=bool)
        flipped[flipped_rows] = True
    result = AuditResult(
        rows=rows,
        ids=[str(all_ids[r]) for r in rows] if all_ids is not None else None,
        labels=labels[rows],
        reliability=collect.reliability[rows],
        suggested=collect.suggested[rows],
        suggested_weight=collect.suggested_weight[rows],
        knn_label=collect.knn_label[rows],
        knn_share=collect.knn_share[rows],
        flipped=flipped[rows] if flipped is not None else None,
        original=stored[rows] if flipped is not None else None,
        class_names=class_names,
        threshold=threshold,
        document={},
    )
    written = None
    if csv_path is not None:
        from nnkcli.storage.atomic import atomic_write_text

        text = result.csv_text(all_rows=write_all)
        atomic_write_text(csv_path, text)
        written = text.count("\n") - 1
    n_flagged = int((result.reliability < threshold).sum())
    result.document = {
        "store": str(store_path),
        "split": split,
        "k": int(k),
        "threshold": threshold,
        "n_rows": n_rows,
        "audited": len(rows),
        "unlabelled": n_rows - len(rows),
        "flagged": n_flagged,
        "flagged_share": round(n_flagged / len(rows), 6),
        "mean_reliability": round(float(result.reliability.mean()), 6),
        "out": None if csv_path is None else {"path": str(csv_path), "rows": written, "all": bool(write_all)},
        "classes": _per_class(result.labels, result.reliability, threshold, class_names, result.flipped),
        "worst": result.table(limit=WORST_ROWS),
        "self_test": None,
        "parameters": {**opts.as_dict(), "inject_noise": inject_noise, "noise_seed": noise_seed},
        "timing": {**timing, "whole_run_s": round(time.perf_counter() - started, 4)},
    }
    if result.flipped is not None:
        test = _self_test(rows, result.flipped, result.reliability, result.knn_share, threshold)
        result.document["self_test"] = {"rate": inject_noise, "seed": noise_seed, **test}
    return result
