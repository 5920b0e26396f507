"""Choosing k (and the kNN temperature) without looking at the query split.

``--select-on train`` runs the same sweep as leave-one-out on a seeded random subset of
``--select-queries`` train rows: each such row is a query, searched against the train
split with itself excluded, scored against its own (train) label. The (k, T) with the
best leave-one-out top-1 is chosen per method (ties: the smaller k, then the smaller T),
and the query split's accuracy is reported at that choice. Nothing here reads the query
split: its labels cannot influence the choice.

The subset search shares the evaluation's index (or shards): it asks the searcher for
``k + 1`` neighbors and drops each query's own row, which is what ``--exclude-self``
does for a contiguous block of rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.options import DEFAULT_SELECT_QUERIES, SELECT_ON  # noqa: F401 (re-exported)

DEFAULT_SELECT_SEED = 0


def selection_rows(n_train: int, n_select: int, seed: int = DEFAULT_SELECT_SEED) -> np.ndarray:
    """Sorted train rows of the leave-one-out subset: all rows when ``n_select >= n_train``.

    The subset depends only on ``(n_train, n_select, seed)``.
    """
    if n_select < 1:
        raise InputError(f"--select-queries must be >= 1, got {n_select}")
    if n_select >= n_train:
        return np.arange(n_train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=n_select, replace=False)).astype(np.int64)


class _LeaveOneOut:
    """A searcher over the train split for queries that are train ``rows``: own row dropped."""

    def __init__(self, base):
        self.base = base
        self.rows: np.ndarray | None = None

    def neighbors(self, q, start, k, exclude_self):
        ids, sims, X, missing = self.base.neighbors(q, 0, k + 1, False)
        is_own = ids == self.rows[:, None]
        # drop the query's own row where found, else the last (least similar) one: the
        # order is exact (similarity, then id), so what is left is the exact top k
        drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), k)
        keep = np.ones(ids.shape, dtype=bool)
        keep[np.arange(len(ids)), drop] = False
        B = len(ids)
        return (ids[keep].reshape(B, k), sims[keep].reshape(B, k), X[keep].reshape(B, k, X.shape[2]),
                missing[keep].reshape(B, k))


class _TrainAsQuery:
    """What ``score_chunk`` reads from an evaluation, with the leave-one-out searcher."""

    def __init__(self, ev, searcher):
        self.searcher = searcher
        self.train_labels = ev.train_labels
        self.n_classes = ev.n_classes


def run_selection(
    ev, opts, *, n_select: int = DEFAULT_SELECT_QUERIES,
    seed: int = DEFAULT_SELECT_SEED, progress: Callable[[int], None] | None = None,
) -> tuple[dict, dict]:
    """Leave-one-out accuracy on the train subset at every k (and T) of ``opts`` (a ``ScoringOptions``).

    Returns
    -------
    accumulators : dict, keyed as ``classification.evaluate_chunks``'s (method, k[, T])
    info : dict with ``rows`` (the subset size), ``seed`` and ``seconds``
    """
    from nnkcli.evaluation.classification import default_chunk_size, make_accumulators, score_chunk
    from nnkcli.numerics.kernels import normalize_rows

    k_values = opts.k_values
    if k_values[-1] > ev.train.n - 1:
        raise InputError(
            f"k={k_values[-1]} is too large for leave-one-out selection on {ev.train.n} train rows",
            hint=f"the largest k --select-on train allows is {ev.train.n - 1}",
        )
    t0 = time.perf_counter()
    rows = selection_rows(int(ev.train.n), int(n_select), seed)
    sel_opts = opts.replace(exclude_self=False)  # the searcher below leaves each row out
    searcher = _LeaveOneOut(ev.searcher)
    view = _TrainAsQuery(ev, searcher)
    chunk = opts.chunk_size or default_chunk_size(k_values[-1] + 1, ev.train.dim, ev.n_classes)
    accs = make_accumulators(ev, sel_opts)
    timing = {"read_s": 0.0, "search_s": 0.0, "knn_s": 0.0, "nnk_s": 0.0, "nnk_fallbacks": 0}
    for lo in range(0, rows.size, chunk):
        block = rows[lo:lo + chunk]
        q = normalize_rows(ev.train.read_rows(block))
        searcher.rows = block
        labels = ev.train_labels[block]
        res = score_chunk(view, q, 0, labels, sel_opts, timing)
        for key, mc in res.by_method_k.items():
            accs[key].update(mc.top, labels, mc.support, mc.solver_stats)
        if progress is not None:
            progress(len(block))
    info = {"rows": int(rows.size), "seed": int(seed), "seconds": round(time.perf_counter() - t0, 4)}
    return accs, info
