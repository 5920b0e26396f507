"""The linear probe: multinomial logistic regression on frozen features, C chosen without the query split.

``probe(store)`` follows DINOv2's protocol (``dinov2/eval/log_regression.py``), in three steps:

1. **select**: a seeded part of the *train* split (``val_fraction`` of each class's rows,
   at least one row of each class left to fit) is held out; the model is fitted on the rest
   at each C of the grid, in increasing order, each fit warm-started from the previous one,
   and scored by its top-1 on the held-out rows (each fit starts at the previous solution, whose
   objective at the new C is known without a pass over the rows, and tries the extrapolated
   path as its first step). The path stops once ``patience`` values of
   C in a row have not beaten the best held-out top-1 (the held-out accuracy rises, peaks
   and falls or plateaus as C grows; the fits past the peak are the slow ones); the count starts
   where the held-out top-1 first differs from its value at the smallest C (below some C the
   weights are C times one fixed direction, so the predictions do not change). The chosen
   C is the first one with the best held-out top-1 (ties: the smaller C, the stronger penalty).
2. **refit** on every labelled train row at the chosen C (warm-started from the selected fit).
3. **evaluate once** on the query split: top-1/top-5 with Wilson intervals.

The query split is opened only in step 3, after the model is final, so its labels cannot
influence C (``tests/unit/evaluation/test_probe.py`` permutes them and checks that the
selection is unchanged). Unlike DINOv2's draw, the held-out rows are stratified: every class
keeps its share in both parts, and a class with one row is never held out.

The features are L2-normalised by default: the geometry the k-NN and NNK evaluations see.
Train rows labelled -1 are left out; classes without a train row cannot be predicted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.probe_options import ProbeOptions
from nnkcli.evaluation.results import DocumentResult

SCHEMA_VERSION = 1
TOP = 5
#: multiply-adds of the logits' product per BLAS thread: a smaller product runs faster on fewer threads
#: (OpenBLAS's threads cost more than they bring below ~16 M, and far more on a busy machine)
GEMM_PER_THREAD = 2**24
#: a selection fit checks its held-out top-1 every this many iterations
FIT_CHECK_EVERY = 2
#: the held-out top-1 has settled when it moves by at most this part of the held-out rows (0.1 point)
HELD_OUT_SLACK = 0.001


class ProbeResult(DocumentResult):
    """What :func:`probe` returns: a read-only mapping over its JSON-able document.

    ``results`` holds one row (method ``linear``: top-1, top-5, intervals, C), as ``classify``'s
    documents do; ``hits`` (not in the document) is, per labelled query, whether its top-1 was
    right, bool (n_labelled,), and ``query_labels`` the query split's labels (all rows): for
    paired tests against other classifiers.
    """

    def __init__(self, document: dict, hits: np.ndarray | None = None, query_labels: np.ndarray | None = None):
        super().__init__(document)
        self.hits: np.ndarray = np.zeros(0, dtype=bool) if hits is None else hits
        self.query_labels = query_labels

    @property
    def results(self) -> list[dict]:
        return self.document["results"]

    @property
    def chosen_c(self) -> float:
        return self.document["chosen_c"]

    def __repr__(self) -> str:
        return f"ProbeResult(store={self.document.get('store')!r}, C={self.document.get('chosen_c')!r})"


# -- the held-out rows ------------------------------------------------------------------------------
def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified held-out rows: ``round(fraction * n_c)`` of each class's n_c rows, at most n_c - 1.

    ``labels`` (n,) int64 >= 0. The rows of each class are drawn in a seeded random order that
    depends only on ``(labels, seed)``. Returns ``(fit_rows, held_rows)``, sorted int64 positions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within each
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    take = np.minimum(np.floor(fraction * counts + 0.5).astype(np.int64), counts - 1)
    rank = np.arange(n) - np.repeat(starts, counts)
    held = rank < np.repeat(take, counts)
    return np.sort(order[~held]), np.sort(order[held])


# -- steps -----------------------------------------------------------------------------------------
def select_c(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    fit_rows: np.ndarray,
    held_rows: np.ndarray,
    opts: ProbeOptions,
    *,
    curvature=None,
    progress: Callable[[int], None] | None = None,
):
    """Fit on ``fit_rows`` along ``opts.c_grid`` (warm starts), score each fit's top-1 on ``held_rows``.

    ``X`` (n, d) float32, ``y`` (n,) classes 0..K-1 of the train rows only; ``curvature`` a
    ``FeatureCurvature`` to precondition the fits with (None: plain L-BFGS).
    Returns ``(best_index, curve, models)``: the curve one dict per C tried, ``models[i]`` its fit.
    """
    from nnkcli.numerics.logistic import fit_softmax

    Xf, yf = X[fit_rows], y[fit_rows]
    Xh, yh = X[held_rows], y[held_rows]
    curve: list[dict] = []
    models: list = []
    theta, prev, best, best_acc = None, None, 0, -1.0
    last_move: float | None = None
    # at a small C the weights are C times one direction (the gradient at zero), so the predictions, and the
    # held-out top-1, do not change with C: the patience is counted from where the top-1 first moves
    first, moved, started = -1.0, False, 0
    for i, C in enumerate(opts.c_grid):
        t0 = time.perf_counter()
        start: np.ndarray | None = theta
        if prev is not None and theta is not None:
            # the solution path is smooth in log C: a secant step from the last two solutions, scaled by how
            # the last move grew on the one before (a geometric series): at a small C the weights grow as C
            # (each move the C ratio times the last), at a large C they settle (moves shrink)
            step = math.log(C / opts.c_grid[i - 1]) / math.log(opts.c_grid[i - 1] / opts.c_grid[i - 2])
            move = float(np.linalg.norm(theta - prev))
            if last_move:
                step *= min(move / last_move, C / opts.c_grid[i - 1])
            last_move = move
            start = theta + step * (theta - prev)
        monitor = HeldOutMonitor(Xh, yh, opts.fit_patience) if opts.fit_patience else None
        model = fit_softmax(
            Xf,
            yf,
            n_classes,
            C,
            theta0=start,
            tol=opts.tol,
            max_iter=opts.max_iter,
            curvature=curvature,
            monitor=monitor,
            check_every=FIT_CHECK_EVERY,
            anchor=models[-1] if models else None,
        )
        prev, theta = theta, model.theta
        acc = float(np.mean(model.scores(Xh).argmax(axis=1) == yh))
        curve.append(
            {
                "c": C,
                "held_out_top1": round(100.0 * acc, 4),
                "iterations": model.n_iter,
                "evaluations": model.n_eval,
                "converged": model.converged,
                "stopped_on_held_out": bool(monitor is not None and monitor.stopped),
                "seconds": round(time.perf_counter() - t0, 4),
            }
        )
        models.append(model)
        if progress is not None:
            progress(1)
        if i == 0:
            first = acc
        moved = moved or acc != first
        if acc > best_acc:
            best, best_acc = i, acc
        elif opts.patience and moved and i - max(best, started) >= opts.patience:
            break
        if not moved:
            started = i
    return best, curve, models


class HeldOutMonitor:
    """Stops a selection fit once its held-out top-1 has settled.

    Called with the fit's current weights (d, K) and bias (K,) every few iterations; True
    (stop) once the held-out top-1 of the last ``checks + 1`` calls spans at most
    ``HELD_OUT_SLACK`` of the held-out rows (at least one row). A fit on its way to the
    tolerance keeps moving its weights in directions that no longer change which class wins
    on the held-out rows, and the selection only reads that.
    """

    def __init__(self, Xh: np.ndarray, yh: np.ndarray, checks: int):
        self.Xh, self.yh, self.checks = Xh, yh, int(checks)
        self.slack = max(1, int(HELD_OUT_SLACK * yh.size))
        self.history: list[int] = []
        self.stopped = False

    def __call__(self, W: np.ndarray, b: np.ndarray) -> bool:
        Z = self.Xh @ W
        Z += b
        self.history.append(int(np.count_nonzero(Z.argmax(axis=1) == self.yh)))
        last = self.history[-(self.checks + 1) :]
        self.stopped = len(last) > self.checks and max(last) - min(last) <= self.slack
        return self.stopped


def ranked_classes(scores: np.ndarray, classes: np.ndarray, top: int = TOP) -> np.ndarray:
    """The ``top`` best classes of each row, best first (ties to the lower class), as store class ids.

    ``scores`` (m, K) over the fitted classes ``classes`` (K,) increasing; columns past K are -1.
    """
    m, K = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    out = np.full((m, top), -1, dtype=np.int64)
    out[:, : min(top, K)] = classes[order]
    return out


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float32 (m, K)."""
    Z = np.asarray(scores, dtype=np.float32) - scores.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


# -- the whole protocol ----------------------------------------------------------------------------
def probe(
    store_path: str | os.PathLike,
    options: ProbeOptions | None = None,
    *,
    train_split: str = "train",
    query_split: str = "val",
    threads: int | None = None,
    confidence: float = 0.95,
    predictions_path: str | os.PathLike | None = None,
    progress_factory: Callable | None = None,
    **settings,
) -> ProbeResult:
    """Linear-probe accuracy of the query split, C chosen on held-out train rows.

    Parameters
    ----------
    store_path : path-like
        The feature store.
    options : ProbeOptions, optional
        The grid of C, the held-out fraction and seed, the patience, normalisation and L-BFGS
        settings; ``**settings`` (any of its fields: ``c_grid=[0.1, 1]``) apply over it.
    train_split, query_split : str
        The split fitted (and from which C is chosen) and the split evaluated once.
    threads : int or None, default=None
        BLAS threads (every core when None).
    confidence : float, default=0.95
        Level of the Wilson intervals of top-1 and top-5.
    predictions_path : path-like, optional
        Write per-query class probabilities and top-5 in ``classify --out``'s format (method
        ``linear``), for ``nnk compare``.
    progress_factory : callable, optional
        ``progress_factory(total, description)``: a context manager yielding ``advance(n)``.

    Returns
    -------
    ProbeResult
        ``.to_dict()`` the document; ``["chosen_c"]``, ``["selection"]["curve"]``, ``["results"]``.

    Raises
    ------
    StoreError
        The store or a split is missing.
    OptionError
        A setting is invalid.
    InputError
        The train split has no labels or fewer than two classes, the held-out part is empty,
        the splits' dimensions differ, or a row is all-zero (with normalisation).
    """
    from nnkcli.numerics.logistic import FeatureCurvature, fit_softmax
    from nnkcli.numerics.stats import check_confidence
    from nnkcli.parallel import native_threads, resolve_threads
    from nnkcli.storage.store_reader import FeatureStore

    started = time.perf_counter()
    opts = (options or ProbeOptions()).replace(**settings)
    try:
        confidence = check_confidence(confidence)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    n_threads = resolve_threads(threads)
    with FeatureStore(store_path) as store, contextlib.ExitStack() as stack:
        train = store.split(train_split)
        store.split(query_split)  # missing: say so before the fits
        labels = train.labels
        labelled = np.flatnonzero(labels >= 0)
        classes, y = np.unique(labels[labelled], return_inverse=True)
        if classes.size < 2:
            raise InputError(
                f"the train split '{train_split}' has {classes.size} labelled class(es); a probe needs two",
                hint="give the probe a labelled train split (--train-split)",
            )
        X = _features(train, labelled, opts.normalize)
        blas_threads = min(n_threads, max(1, X.size * classes.size // GEMM_PER_THREAD))
        stack.enter_context(native_threads(blas_threads))
        fit_rows, held_rows = holdout_split(y, opts.val_fraction, opts.seed)
        if held_rows.size == 0:
            raise InputError(
                f"no train row is held out ({opts.val_fraction:g} of each class rounds to 0 rows)",
                hint="raise --val-fraction, or use a larger train split",
            )
        t0 = time.perf_counter()
        # the features' curvature, measured once on the fitted rows, preconditions every fit, the refit too
        curvature = FeatureCurvature.of(X, fit_rows) if opts.precondition else None
        with _progress(progress_factory, len(opts.c_grid), "choosing C") as advance:
            best, curve, models = select_c(
                X, y, classes.size, fit_rows, held_rows, opts, curvature=curvature, progress=advance
            )
        select_s = time.perf_counter() - t0
        chosen = opts.c_grid[best]
        t0 = time.perf_counter()
        model = fit_softmax(
            X,
            y,
            classes.size,
            chosen,
            theta0=models[best].theta,
            tol=opts.tol,
            max_iter=opts.max_iter,
            curvature=curvature,
        )
        refit_s = time.perf_counter() - t0
        del X, models
        # the query split is read only now: nothing above depends on it
        query = store.split(query_split)
        if query.dim != train.dim:
            raise InputError(f"the query split has dimension {query.dim}, the train split {train.dim}")
        t0 = time.perf_counter()
        Xq = _features(query, None, opts.normalize)
        scores = model.scores(Xq)
        top = ranked_classes(scores, classes)
        q_labels = query.labels
        query_ids = query.ids if predictions_path is not None else None
        class_names = _class_names(store, classes)
        eval_s = time.perf_counter() - t0
        doc = _document(store, train, query, opts, classes, fit_rows, held_rows, curve, best, model)
    keep = q_labels >= 0
    hit1 = top[keep, 0] == q_labels[keep]
    hit5 = (top[keep] == q_labels[keep, None]).any(axis=1)
    doc["results"] = [_row(hit1, hit5, chosen, confidence)]
    doc["n_queries"] = int(keep.sum())
    doc["n_unlabelled_queries"] = int((~keep).sum())
    doc["parameters"]["confidence"] = confidence
    doc["parameters"]["threads"] = n_threads
    doc["parameters"]["blas_threads"] = blas_threads
    if predictions_path is not None:
        from nnkcli.evaluation.predictions import write_linear_predictions

        probs = np.zeros((scores.shape[0], len(class_names)), dtype=np.float32)
        probs[:, classes] = softmax(scores)
        write_linear_predictions(predictions_path, doc, q_labels, probs, top, query_ids, class_names)
    doc["timing"] = {
        "select_s": round(select_s, 4),
        "refit_s": round(refit_s, 4),
        "evaluate_s": round(eval_s, 4),
        "total_s": round(time.perf_counter() - started, 4),
    }
    return ProbeResult(doc, hits=hit1, query_labels=q_labels)


def _features(split, rows: np.ndarray | None, normalize: bool) -> np.ndarray:
    """The split's rows (all, or the sorted ``rows``) as float32, L2-normalised when asked."""
    from nnkcli.numerics.kernels import normalize_rows

    if rows is None or rows.size == split.n:
        X = split.read()
    else:
        X = split.read_rows(rows)
    if normalize:
        X = normalize_rows(X, copy=False)  # X was just read: normalised where it lies
    elif not np.isfinite(X).all():
        raise InputError(f"the split '{split.name}' holds features that are not finite")
    return X


def _class_names(store, classes: np.ndarray) -> list[str]:
    if store.classes is not None:
        return list(store.classes)
    return [str(c) for c in range(int(classes.max()) + 1)]


def _row(hit1: np.ndarray, hit5: np.ndarray, chosen: float, confidence: float) -> dict:
    from nnkcli.numerics.stats import wilson_percent

    n = int(hit1.size)

    def pct(h) -> float:
        return round(100.0 * int(h.sum()) / n, 4) if n else math.nan

    return {
        "method": "linear",
        "k": None,
        "c": chosen,
        "n_queries": n,
        "top1": pct(hit1),
        "top1_ci": wilson_percent(int(hit1.sum()), n, confidence),
        "top5": pct(hit5),
        "top5_ci": wilson_percent(int(hit5.sum()), n, confidence),
    }


def _document(store, train, query, opts, classes, fit_rows, held_rows, curve, best, model) -> dict:
    warnings = []
    if not model.converged:
        warnings.append(f"the refit at C={model.C:g} stopped before L-BFGS converged ({model.n_iter} iterations)")
    # a fit stopped on its settled held-out top-1 did what the selection needs; one cut by --max-iter did not
    slow = [p["c"] for p in curve if not p["converged"] and not p["stopped_on_held_out"]]
    if slow:
        warnings.append(
            f"{len(slow)} selection fit(s) stopped before converging (C = {', '.join(f'{c:g}' for c in slow)})"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "store": str(store.path),
        "train_split": train.name,
        "query_split": query.name,
        "dim": int(train.dim),
        "n_classes": int(classes.size),
        "n_train": int(fit_rows.size + held_rows.size),
        "chosen_c": opts.c_grid[best],
        "selection": {
            "n_fit": int(fit_rows.size),
            "n_held_out": int(held_rows.size),
            "best_index": int(best),
            "stopped_early": len(curve) < len(opts.c_grid),
            "curve": curve,
        },
        "refit": {
            "iterations": model.n_iter,
            "evaluations": model.n_eval,
            "converged": model.converged,
            "objective": model.objective,
        },
        "parameters": {**opts.as_dict(), "objective": "0.5*||W||^2 + C*sum(CE), bias not penalised"},
        "fingerprints": {"train": train.content_sha256, "query": query.content_sha256},
        "warnings": warnings,
    }


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _progress(factory: Callable | None, total: int, what: str):
    return factory(total, what) if factory is not None else _NoProgress()
