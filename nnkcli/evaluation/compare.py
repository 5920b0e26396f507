"""Is B better than A on the same queries? (``nnk compare``)

A and B are two classifiers' predictions for one query split: two ``classify --out``
prediction files, two feature stores classified with identical options, or one store
under two methods / k. Everything reported is a function of a few counts accumulated
over the queries in blocks — each side's hits (top-1 and top-5, per class) and the
discordant queries (only A right, only B right) — so two prediction files of 1.28 M
queries are compared in bounded memory:

- each side's top-1/top-5 with its Wilson interval;
- the difference B − A in points with a paired-bootstrap interval (queries resampled,
  both sides together; ``nnkcli.numerics.stats.paired_bootstrap_difference``);
- McNemar's exact test on the discordant queries;
- a verdict at ``alpha``: significant when McNemar's p < alpha, ``better`` = the side
  with more discordant wins;
- per-class top-1 (and top-5) of both sides and their difference.

Queries labelled -1 are skipped on both sides (the two sides have the same labels).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.options import DataOptions, ScoringOptions, resolve_one_k
from nnkcli.numerics import stats

BLOCK_ROWS = 65_536  # queries read per block from each prediction file (~5 MB of top-5 ids)
_SIDE = re.compile(r"^(nnk|knn|linear)(?:@(\d+))?$")


@dataclass(frozen=True)
class SideSpec:
    """``METHOD[@K]`` of one side; ``k=None`` means the default (``--k``, or the file's k)."""

    method: str
    k: int | None = None

    @classmethod
    def parse(cls, text: str) -> SideSpec:
        m = _SIDE.match(text.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ValueError(
                f"expected METHOD[@K] with METHOD nnk, knn or linear and K >= 1 (e.g. knn@20), got {text!r}"
            )
        return cls(m.group(1), int(m.group(2)) if m.group(2) else None)

    def label(self, k: int) -> str:
        return f"{self.method}@{k}"


@dataclass
class PairedCounts:
    """Counts over the labelled queries that A and B both classified."""

    n_classes: int
    n: int = 0
    a_hits: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # top-1, top-5
    b_hits: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    a_only: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    b_only: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    # per class, sized by n_classes in __post_init__
    class_total: np.ndarray = field(init=False)
    class_a: np.ndarray = field(init=False)  # (2, C): per-class top-1 and top-5 hits of A
    class_b: np.ndarray = field(init=False)

    def __post_init__(self):
        C = self.n_classes
        self.class_total = np.zeros(C, np.int64)
        self.class_a = np.zeros((2, C), np.int64)
        self.class_b = np.zeros((2, C), np.int64)

    def update(self, labels: np.ndarray, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
        """Add labelled queries: ``labels`` (m,) >= 0, ``a``/``b`` = (top-1 hit, top-5 hit), bool (m,)."""
        C = self.n_classes
        self.n += int(labels.size)
        self.class_total += np.bincount(labels, minlength=C)[:C]
        for j in (0, 1):
            ha, hb = a[j], b[j]
            self.a_hits[j] += int(ha.sum())
            self.b_hits[j] += int(hb.sum())
            self.a_only[j] += int((ha & ~hb).sum())
            self.b_only[j] += int((hb & ~ha).sum())
            self.class_a[j] += np.bincount(labels[ha], minlength=C)[:C]
            self.class_b[j] += np.bincount(labels[hb], minlength=C)[:C]


def hits_of(top: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-5 correctness, bool (m,), from classes (m, >=1) ranked best first."""
    return top[:, 0] == labels, (top[:, :5] == labels[:, None]).any(axis=1)


class QuerySplitMismatch(InputError):
    """A and B did not classify the same queries."""


def _mismatch(what: str) -> QuerySplitMismatch:
    return QuerySplitMismatch(
        f"A and B are not predictions for the same queries: {what}",
        hint="compare two runs on the same query split (the same rows in the same order)",
    )


def check_same_queries(n_a: int, n_b: int, labels_a, labels_b, ids_a=None, ids_b=None, offset: int = 0) -> None:
    """Raise naming the first query where A and B differ (count, label or sample id)."""
    if n_a != n_b:
        raise _mismatch(f"A has {n_a} queries, B has {n_b}")
    diff = np.flatnonzero(np.asarray(labels_a) != np.asarray(labels_b))
    if diff.size:
        i = int(diff[0])
        raise _mismatch(f"query {offset + i} is labelled {int(labels_a[i])} in A but {int(labels_b[i])} in B")
    if ids_a is not None and ids_b is not None:
        ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
        diff = np.flatnonzero(ids_a != ids_b)
        if diff.size:
            i = int(diff[0])
            raise _mismatch(f"query {offset + i} has sample id {_text(ids_a[i])!r} in A but {_text(ids_b[i])!r} in B")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- sources ------------------------------------------------------------------------
def counts_from_prediction_files(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    a: SideSpec | None,
    b: SideSpec | None,
    *,
    block_rows: int = BLOCK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> tuple[PairedCounts, dict, dict, list[str]]:
    """Stream two ``classify --out`` files in lockstep blocks (memory: two blocks)."""
    from nnkcli.evaluation.predictions import PredictionFile

    with PredictionFile(path_a) as fa, PredictionFile(path_b) as fb:
        side_a, side_b = _file_side(fa, a, "A"), _file_side(fb, b, "B")
        if fa.n != fb.n:
            raise _mismatch(f"A has {fa.n} queries, B has {fb.n}")
        if fa.class_names is not None and fb.class_names is not None and fa.class_names != fb.class_names:
            raise _mismatch(f"their class lists differ (A: {len(fa.class_names)} classes, B: {len(fb.class_names)})")
        names = fa.class_names or fb.class_names or fa.counted_classes(block_rows)
        n_classes = len(names)
        counts = PairedCounts(max(n_classes, 1))
        for start in range(0, fa.n, block_rows):
            stop = min(fa.n, start + block_rows)
            la, ta, ia = fa.read_block(side_a["method"], start, stop)
            lb, tb, ib = fb.read_block(side_b["method"], start, stop)
            check_same_queries(fa.n, fb.n, la, lb, ia, ib, offset=start)
            if ((la < -1) | (la >= counts.n_classes)).any():
                raise InputError(f"{fa.path} has labels outside its {counts.n_classes} classes")
            keep = la >= 0
            y = la[keep]
            counts.update(y, hits_of(ta[keep], y), hits_of(tb[keep], y))
            if progress is not None:
                progress(stop - start)
        side_a["n_unlabelled"] = side_b["n_unlabelled"] = fa.n - counts.n
        return counts, side_a, side_b, names


def _file_side(f, spec: SideSpec | None, name: str) -> dict:
    methods = f.methods
    if spec is None:
        if len(methods) != 1 and "nnk" not in methods:
            raise InputError(f"{name} ({f.path.name}) holds no method to compare")
        method = methods[0] if len(methods) == 1 else "nnk"
    else:
        method = spec.method
        if method not in methods:
            raise InputError(
                f"{name} ({f.path.name}) has no {method} predictions (it has {', '.join(methods)})",
                hint=f"choose --{name.lower()} {'/'.join(methods)}, or classify with --method both",
            )
        if spec.k is not None and spec.k != f.k:
            raise InputError(
                f"{name} ({f.path.name}) was classified at k={f.k}, not k={spec.k}",
                hint=f"use --{name.lower()} {method}, or classify again with --k {spec.k}",
            )
    return {
        "label": name,
        "source": str(f.path),
        "kind": "predictions",
        "method": method,
        "k": f.k,
        "parameters": f.attrs.get("parameters"),
    }


def counts_from_stores(
    store_a: str | os.PathLike,
    store_b: str | os.PathLike | None,
    a: SideSpec,
    b: SideSpec,
    *,
    options: ScoringOptions,
    data: DataOptions,
    progress_factory: Callable | None = None,
) -> tuple[PairedCounts, dict, dict, list[str], dict]:
    """Classify the query split(s) and pair the per-query results.

    ``options.k_values`` holds the default k of a side without ``@K``. With ``store_b``
    None, both sides come from ``store_a`` (one search at the larger k, both classifiers
    scored on the same neighbors). Otherwise each store is classified through its own
    index with the same options, after checking that the two query splits hold the same
    queries (count, labels, sample ids) — before any search.
    """
    from nnkcli.evaluation.setup import open_evaluation

    k = options.k_values[0]
    ka, kb = a.k or k, b.k or k
    if store_b is None:
        opts = options.replace(methods=tuple(dict.fromkeys([a.method, b.method])), k_values=(ka, kb))
        with open_evaluation(store_a, opts, data, progress_factory) as ev:
            accs, timing = _run(ev, opts, progress_factory, "classifying")
            labels = ev.query_labels
            ha, hb = accs[(a.method, ka)].hits(), accs[(b.method, kb)].hits()
            names, n_classes = ev.class_names, ev.n_classes
            warnings = list(ev.warnings)
        source_a = source_b = str(store_a)
        timing_doc = {"a": timing, "b": timing}
    else:
        opts_a = options.replace(methods=(a.method,), k_values=(ka,))
        opts_b = options.replace(methods=(b.method,), k_values=(kb,))
        with (
            open_evaluation(store_a, opts_a, data, progress_factory) as ev_a,
            open_evaluation(store_b, opts_b, data, progress_factory) as ev_b,
        ):
            check_same_queries(
                ev_a.query.n, ev_b.query.n, ev_a.query_labels, ev_b.query_labels, ev_a.query.ids, ev_b.query.ids
            )
            if ev_a.class_names != ev_b.class_names:
                raise _mismatch("the two stores' class lists differ")
            ev_a.check_k(opts_a)
            ev_b.check_k(opts_b)
            accs_a, timing_a = _run(ev_a, opts_a, progress_factory, "classifying A")
            accs_b, timing_b = _run(ev_b, opts_b, progress_factory, "classifying B")
            labels = ev_a.query_labels
            ha, hb = accs_a[(a.method, ka)].hits(), accs_b[(b.method, kb)].hits()
            names, n_classes = ev_a.class_names, ev_a.n_classes
            warnings = [f"A: {w}" for w in ev_a.warnings] + [f"B: {w}" for w in ev_b.warnings]
        source_a, source_b = str(store_a), str(store_b)
        timing_doc = {"a": timing_a, "b": timing_b}
    y = labels[labels >= 0]
    counts = PairedCounts(n_classes)
    counts.update(y, ha, hb)
    unlabelled = int((labels < 0).sum())
    side_a = {
        "label": "A",
        "source": source_a,
        "kind": "store",
        "method": a.method,
        "k": ka,
        "n_unlabelled": unlabelled,
    }
    side_b = {
        "label": "B",
        "source": source_b,
        "kind": "store",
        "method": b.method,
        "k": kb,
        "n_unlabelled": unlabelled,
    }
    parameters = {**options.as_dict(), **data.as_dict()}
    for key in ("methods", "k_values"):  # per side, in "a" and "b"
        parameters.pop(key, None)
    return counts, side_a, side_b, list(names), {"parameters": parameters, "timing": timing_doc, "warnings": warnings}


def _run(ev, opts, progress_factory, what):
    from nnkcli.evaluation.streaming import evaluate_chunks

    if progress_factory is None:
        return evaluate_chunks(ev, opts, keep_hits=True)
    with progress_factory(ev.query.n, what) as advance:
        return evaluate_chunks(ev, opts, progress=advance, keep_hits=True)


# -- the report ---------------------------------------------------------------------------
def summarise(
    counts: PairedCounts,
    side_a: dict,
    side_b: dict,
    class_names: Sequence[str],
    *,
    confidence: float = stats.DEFAULT_CONFIDENCE,
    alpha: float = 0.05,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """The comparison document (accuracies and differences in percent)."""
    n = counts.n
    if n == 0:
        raise InputError(
            "A and B have no labelled query in common, so there is nothing to compare",
            hint="the query split needs labels",
        )
    doc: dict = {"a": _side(side_a, counts.a_hits, n, confidence), "b": _side(side_b, counts.b_hits, n, confidence)}
    tests = [_test(counts, j, confidence, alpha, n_boot, seed) for j in (0, 1)]
    doc["difference"] = tests[0]["difference"]
    doc["mcnemar"] = tests[0]["mcnemar"]
    doc["alpha"] = alpha
    doc["confidence"] = confidence
    doc["significant"] = tests[0]["significant"]
    doc["better"] = tests[0]["better"]
    doc["top5"] = tests[1]
    doc["verdict"] = verdict(doc)
    doc["per_class"] = per_class(counts, class_names, confidence)
    return doc


def _side(side: dict, hits: np.ndarray, n: int, confidence: float) -> dict:
    out = {key: side[key] for key in ("label", "source", "kind", "method", "k")}
    out.update(
        n=n,
        n_unlabelled=side.get("n_unlabelled", 0),
        top1=_pct(hits[0], n),
        top1_ci=stats.wilson_percent(hits[0], n, confidence),
        top5=_pct(hits[1], n),
        top5_ci=stats.wilson_percent(hits[1], n, confidence),
    )
    if side.get("parameters") is not None:
        out["parameters"] = side["parameters"]
    return out


def _test(counts: PairedCounts, j: int, confidence: float, alpha: float, n_boot: int, seed: int) -> dict:
    n, a_only, b_only = counts.n, int(counts.a_only[j]), int(counts.b_only[j])
    lo, hi = stats.paired_bootstrap_difference(a_only, b_only, n, confidence=confidence, n_boot=n_boot, seed=seed)
    p = stats.mcnemar_exact(a_only, b_only)
    significant = bool(p < alpha)
    better = None if not significant else ("b" if b_only > a_only else "a")
    return {
        "difference": {
            "points": round(100.0 * (b_only - a_only) / n, 4),
            "ci": [round(100 * lo, 4), round(100 * hi, 4)],
            "bootstrap": n_boot,
            "seed": seed,
        },
        "mcnemar": {"a_only": a_only, "b_only": b_only, "p_value": p},
        "significant": significant,
        "better": better,
    }


def per_class(counts: PairedCounts, class_names: Sequence[str], confidence: float) -> list[dict]:
    """Per class with queries: top-1 (and top-5) of A and B and B − A, largest |Δ top-1| first."""
    rows = []
    for c in np.flatnonzero(counts.class_total > 0).tolist():
        t = int(counts.class_total[c])
        a1, b1 = _pct(counts.class_a[0, c], t), _pct(counts.class_b[0, c], t)
        a5, b5 = _pct(counts.class_a[1, c], t), _pct(counts.class_b[1, c], t)
        rows.append(
            {
                "class": class_names[c] if c < len(class_names) else str(c),
                "n": t,
                "a": a1,
                "a_ci": stats.wilson_percent(counts.class_a[0, c], t, confidence),
                "b": b1,
                "b_ci": stats.wilson_percent(counts.class_b[0, c], t, confidence),
                "delta": round(b1 - a1, 4),
                "a_top5": a5,
                "b_top5": b5,
                "delta_top5": round(b5 - a5, 4),
            }
        )
    # stable: equal |delta| keep the class order
    return sorted(rows, key=lambda r: -abs(r["delta"]))


def verdict(doc: dict) -> str:
    """One line: which side is better, by how much, and how sure we are."""
    d, m = doc["difference"], doc["mcnemar"]
    level = f"{100 * doc['confidence']:g} %"
    p = _p_text(m["p_value"])
    if not doc["significant"]:
        return (
            f"no significant difference: B - A = {d['points']:+.2f} points ({level} CI {d['ci'][0]:.1f} – "
            f"{d['ci'][1]:.1f}), McNemar p = {p} >= {doc['alpha']:g}"
        )
    lo, hi = d["ci"]
    if doc["better"] == "b":
        return f"B is better than A by {d['points']:.2f} points ({level} CI {lo:.1f} – {hi:.1f}), McNemar p = {p}"
    return f"B is worse than A by {-d['points']:.2f} points ({level} CI {-hi:.1f} – {-lo:.1f}), McNemar p = {p}"


def _p_text(p: float) -> str:
    if p == 0.0:  # below the smallest double: say so rather than print 0
        return "< 1e-300"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _pct(hits, n) -> float:
    return round(100.0 * float(hits) / n, 4) if n else float("nan")


def compare(
    a_path: str | os.PathLike,
    b_path: str | os.PathLike | None = None,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    a: SideSpec | str | None = None,
    b: SideSpec | str | None = None,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = 0,
    progress_factory: Callable | None = None,
    **settings,
) -> dict:
    """Compare A and B on the same queries; returns the JSON-able document.

    Parameters
    ----------
    a_path, b_path : path-like
        Two prediction files, or two stores, or one store (``b_path`` None; then ``a`` and
        ``b`` say which ``METHOD[@K]`` each side is).
    options : ScoringOptions, optional
        How stores are scored (``k_values``: one k, the default of a side without ``@K``);
        ``confidence`` is the level of every interval, ``alpha`` that of the verdict.
    data : DataOptions, optional
        Splits and saved index of the stores.
    a, b : SideSpec or str, optional
        ``"knn@20"``; for prediction files the method in each file (default ``nnk``, or
        the file's only method).
    n_boot, seed : int
        Paired-bootstrap resamples and seed.
    **settings
        Any field of ``ScoringOptions`` or ``DataOptions``, applied over ``options``/``data``.
    """
    a = SideSpec.parse(a) if isinstance(a, str) else a
    b = SideSpec.parse(b) if isinstance(b, str) else b
    if "k" in settings:
        settings["k_values"] = (settings.pop("k"),)
    options, data = resolve_one_k(options, data, settings, command="compare")
    if n_boot < 1:
        raise InputError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    paths = [p for p in (a_path, b_path) if p is not None]
    kinds = [_kind(p) for p in paths]
    if "predictions" in kinds and "unreadable" in kinds:  # a truncated prediction file, say
        from nnkcli.storage.array_files import nnk_format_of

        nnk_format_of(paths[kinds.index("unreadable")])  # raises, naming the file and why
    extra: dict = {}
    if b_path is not None and kinds == ["predictions", "predictions"]:
        counts, side_a, side_b, names = counts_from_prediction_files(a_path, b_path, a, b)
    elif "predictions" in kinds:
        raise InputError(
            "compare two prediction files or two stores, not one of each",
            hint="classify the store with --out PRED.h5 first, or pass two stores",
        )
    else:
        if "linear" in {side.method for side in (a, b) if side is not None}:
            raise InputError(
                "a store is classified by nnk or knn; linear predictions come from 'nnk probe --out FILE'",
                hint="compare the probe's prediction file with a classify --out file",
            )
        (k,) = options.k_values
        if b_path is None:
            if a is None or b is None:
                raise InputError(
                    "one store needs --a and --b (e.g. --a knn@20 --b nnk@50)",
                    hint="or give two stores or two prediction files",
                )
            if a.method == b.method and (a.k or k) == (b.k or k):
                raise InputError(f"--a and --b are the same classifier ({a.label(a.k or k)})")
        a = a or SideSpec("nnk")
        b = b or SideSpec(a.method)
        counts, side_a, side_b, names, extra = counts_from_stores(
            a_path, b_path, a, b, options=options, data=data, progress_factory=progress_factory
        )
    doc = summarise(
        counts, side_a, side_b, names, confidence=options.confidence, alpha=options.alpha, n_boot=n_boot, seed=seed
    )
    doc.update(extra)
    return doc


def _kind(path: str | os.PathLike) -> str:
    """``predictions``, ``store`` or ``unreadable`` (not an HDF5 file nnkcli can open), from the root
    attribute ``nnk_format`` (a store's own reader says why an unreadable store cannot be read)."""
    from nnkcli.errors import StoreError
    from nnkcli.storage.array_files import nnk_format_of

    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    try:
        return "predictions" if nnk_format_of(p) == "predictions" else "store"
    except StoreError:
        return "unreadable"
