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
from collections.abc import Callable

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.options import DEFAULT_SELECT_QUERIES, SELECT_ON  # noqa: F401 (re-exported)
from nnkcli.evaluation.search import Searcher

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


class _LeaveOneOut(Searcher):
    """A searcher over the train split whose queries are the train ``rows``: each own row dropped.

    The same two stages as the searcher it wraps, when it has them (``search_ids`` on large
    blocks, ``refine`` on sub-chunks), so the selection runs through the evaluation's
    pipeline: its threads, search blocks and overlap, as the query split's sweep does. The
    neighbors come back to the host (not ``on_device``): the left-out row is dropped there.
    """

    on_device = False

    def __init__(self, base: Searcher, rows: np.ndarray):
        self.base = base
        self.rows = rows
        self.n, self.dim = base.n, base.dim
        self.thread_safe = base.thread_safe
        self.two_stage = base.two_stage
        self.chunk_budget = base.chunk_budget  # a sharded index's smaller working memory

    def search_ids(self, q, start, k, exclude_self):
        from nnkcli.evaluation.search import drop_own_rows

        ids = self.base.search_ids(q, start, k + 1, False)
        return drop_own_rows(ids, start, k, own=self.rows[start : start + len(q)])

    def refine(self, q, ids):
        return self.base.refine(q, ids)

    def neighbors(self, q, start, k, exclude_self):
        ids, sims, X, missing = self.base.neighbors(q, start, k + 1, False)
        is_own = ids == self.rows[start : start + len(q), None]
        # drop the query's own row where found, else the last (least similar) one: the
        # order is exact (similarity, then id), so what is left is the exact top k
        drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), k)
        keep = np.ones(ids.shape, dtype=bool)
        keep[np.arange(len(ids)), drop] = False
        B = len(ids)
        return (
            ids[keep].reshape(B, k),
            sims[keep].reshape(B, k),
            X[keep].reshape(B, k, X.shape[2]),
            missing[keep].reshape(B, k),
        )


class _SubsetSplit:
    """Train ``rows`` read as a query split (``read(start, stop)`` by position in ``rows``)."""

    def __init__(self, train, rows: np.ndarray):
        self.train, self.rows = train, rows
        self.name, self.n, self.dim = train.name, int(rows.size), train.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.train.read_rows(self.rows[start:stop])


class _SelectionEvaluation:
    """What ``evaluate_chunks`` reads from an evaluation: the train subset as queries, left out."""

    def __init__(self, ev, rows: np.ndarray):
        self.train, self.n_classes, self.train_labels = ev.train, ev.n_classes, ev.train_labels
        self.query = _SubsetSplit(ev.train, rows)
        self.query_labels = ev.train_labels[rows]
        self.rows = (0, int(rows.size))
        self.searcher = _LeaveOneOut(ev.searcher, rows)

    def check_k(self, opts) -> None:
        """Checked by ``run_selection`` (k <= n_train - 1)."""


def run_selection(
    ev,
    opts,
    *,
    n_select: int = DEFAULT_SELECT_QUERIES,
    seed: int = DEFAULT_SELECT_SEED,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, dict]:
    """Leave-one-out accuracy on the train subset at every k (and T) of ``opts`` (a ``ScoringOptions``).

    Returns
    -------
    accumulators : dict, keyed as ``streaming.evaluate_chunks``'s (method, k[, T])
    info : dict with ``rows`` (the subset size), ``seed`` and ``seconds``
    """
    from nnkcli.evaluation.streaming import evaluate_chunks

    k_values = opts.k_values
    if k_values[-1] > ev.train.n - 1:
        raise InputError(
            f"k={k_values[-1]} is too large for leave-one-out selection on {ev.train.n} train rows",
            hint=f"the largest k --select-on train allows is {ev.train.n - 1}",
        )
    t0 = time.perf_counter()
    rows = selection_rows(int(ev.train.n), int(n_select), seed)
    sel_opts = opts.replace(exclude_self=False)  # the searcher leaves each row out
    accs, _ = evaluate_chunks(_SelectionEvaluation(ev, rows), sel_opts, progress=progress)
    info = {"rows": int(rows.size), "seed": int(seed), "seconds": round(time.perf_counter() - t0, 4)}
    return accs, info


def subset_evaluation(ev, rows: np.ndarray):
    """The train ``rows`` (sorted) of ``ev`` as the queries of ``evaluate_chunks``, each left out of its own
    search: what the selection runs on (also ``nnkcli.evaluation.quality``'s sample). Score it with
    ``exclude_self=False`` (the searcher leaves each row out); ``ChunkResult.start`` counts in ``rows``.
    """
    return _SelectionEvaluation(ev, rows)
