"""Scoring one chunk of queries: its neighbors re-ranked exactly, then every method at every k.

``score_chunk`` takes a chunk of normalized queries (and, from the pipeline's search stage,
their neighbors), and returns each method's class scores, top-5 and (NNK) weights at every
requested k: the k-NN votes of each temperature and the NNK solve (the exact solver on the
cosine kernel, per k on the Gaussian kernel, or the NNK paper's pruning solver with what it
costs against the exact solution). On an ``on_device`` searcher (the torch backend) the chunk
is scored on its device (``nnkcli.evaluation.torch_backend.score_on_device``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nnkcli.evaluation.options import ScoringOptions
from nnkcli.evaluation.search import DeviceNeighbors

# imported here, by the main thread, never inside score_chunk: the pipeline's worker threads run it,
# and a signal that strikes the main thread inside an import can leave that module's import lock held,
# on which a worker importing the same module would wait forever (seen once in the signal-window test)
from nnkcli.numerics import solver
from nnkcli.numerics.cosine import nnk_solve_cosine
from nnkcli.numerics.pruning import cosine_blocks_float32, pruning_solve
from nnkcli.numerics.scores import TOP, knn_scores_path


def solves_cosine_nnk(opts: ScoringOptions) -> bool:
    """Whether a run solves cosine-kernel NNK problems (the ones the compiled engine takes)."""
    return "nnk" in opts.methods and opts.kernel == "cosine" and opts.solver == "exact"


@dataclass
class MethodChunk:
    """One method's output for one chunk at one k."""

    top: np.ndarray  # (B, TOP) int64 class ids, -1 = none
    scores: np.ndarray  # (B, C) float64
    theta: np.ndarray | None = None  # (B, k) float64 raw NNK weights
    support: np.ndarray | None = None  # (B,) int NNK support sizes
    solver_stats: tuple | None = None  # pruning solver: (kkt failures, sum of objective gaps, queries, kkt tol)


@dataclass
class ChunkResult:
    start: int
    ids: np.ndarray  # (B, K) int64 neighbor rows in the train split, most similar first
    sims: np.ndarray  # (B, K) float64 cosine similarities
    labels: np.ndarray  # (B,) int64 true labels
    by_method_k: dict = field(default_factory=dict)  # (method, k) -> MethodChunk


def search_neighbors(ev, q: np.ndarray, start: int, k: int, exclude_self: bool):
    """Search, drop each query's own row under leave-one-out, re-rank exactly (see ``evaluation.search``).

    Returns ids (B, k) int64, sims (B, k) float64, X (B, k, d) float32 neighbor vectors, missing (B, k) bool.
    """
    return ev.searcher.neighbors(q, start, k, exclude_self)


def score_chunk(
    ev,
    q: np.ndarray,
    start: int,
    labels: np.ndarray,
    opts: ScoringOptions,
    timing: dict,
    found=None,
) -> ChunkResult:
    """All methods at all ``opts.k_values`` (ascending) for one chunk of normalized queries ``q`` (B, d).

    ``ev`` is an :class:`~nnkcli.evaluation.setup.Evaluation` (its ``searcher``, ``train_labels``
    and ``n_classes``). ``found`` = (ids, sims, X, missing) of the chunk's neighbors if already
    searched (the pipeline's search stage), or their :class:`DeviceNeighbors`; else they are
    searched here.

    Results are keyed ``(method, k)``; the extra kNN temperatures of a grid ``("knn", k, T)``.
    """
    k_values = opts.k_values
    k_max = k_values[-1]
    t0 = time.perf_counter()
    if found is None and ev.searcher.on_device:
        found = ev.searcher.device_neighbors(q, start, k_max, opts.exclude_self)
        timing["search_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
    if isinstance(found, DeviceNeighbors):  # the torch backend: the chunk is scored on its device
        from nnkcli.evaluation.torch_backend import device_scoring, score_on_device

        if device_scoring(opts):
            entries = score_on_device(found, ev.searcher.labels_on_device(ev.train_labels), ev.n_classes, opts, timing)
            out = ChunkResult(start=start, ids=found.ids.cpu().numpy(), sims=found.sims.cpu().numpy(), labels=labels)
            out.by_method_k.update((key, MethodChunk(**entry)) for key, entry in entries.items())
            return out
        found = found.numpy()  # no device port of this NNK setting: numpy scores the chunk
    ids, sims, X, missing = search_neighbors(ev, q, start, k_max, opts.exclude_self) if found is None else found
    nb_labels = np.where(missing, -1, ev.train_labels[np.where(missing, 0, ids)])
    timing["search_s" if found is None else "rerank_s"] += time.perf_counter() - t0
    out = ChunkResult(start=start, ids=ids, sims=sims, labels=labels)
    C = ev.n_classes
    finite_sims = np.where(missing, 0.0, sims)  # a missing neighbor weighs nothing

    if "knn" in opts.methods:
        t0 = time.perf_counter()
        # a temperature grid re-weights the same neighbors: one exp per T, no new search; several
        # k (a sweep) add each k's new neighbors to the previous k's scores, bit for bit the same
        if len(k_values) == 1:
            paths = [
                [
                    solver.knn_scores(
                        finite_sims[:, :k_max],
                        nb_labels[:, :k_max],
                        C,
                        weighting=opts.weighting,
                        temperature=temperature,
                    )
                ]
                for temperature in opts.knn_temperatures
            ]
        else:
            paths = [
                knn_scores_path(finite_sims, nb_labels, C, k_values, weighting=opts.weighting, temperature=temperature)
                for temperature in opts.knn_temperatures
            ]
        for ki, k in enumerate(k_values):
            for i, temperature in enumerate(opts.knn_temperatures):
                scores = paths[i][ki]
                key = ("knn", k) if i == 0 else ("knn", k, temperature)
                out.by_method_k[key] = MethodChunk(
                    top=solver.topk_classes(scores, TOP, rule=opts.top5_rule), scores=scores
                )
        timing["knn_s"] += time.perf_counter() - t0

    if "nnk" in opts.methods:
        t0 = time.perf_counter()
        if opts.solver == "pruning":
            path = _pruning_path(q, X, finite_sims, missing, k_values, opts)
        elif opts.kernel == "cosine":
            # k-independent kernel: every k solved from the leading neighbors of one search,
            # float32 candidates, float64 polish and certificate (nnkcli.numerics.cosine)
            g = 0.5 * (1.0 + finite_sims)
            Xc = X
            if missing.any():  # an absent neighbor: zero vector and g = 0, so theta = 0
                Xc = np.where(missing[:, :, None], np.float32(0.0), X)
                g[missing] = 0.0
            path = nnk_solve_cosine(Xc, g, k_values, tol=opts.tol)
        else:  # the Gaussian kernel's sigma depends on k: one block per k
            path = []
            for k in k_values:
                G, g = solver.kernel_blocks(q, X[:, :k], kernel=opts.kernel)
                _mask_missing(G, g, missing[:, :k])
                path.append(solver.nnk_solve(G, g, tol=opts.tol))
        for k, res in zip(k_values, path, strict=True):
            scores = solver.nnk_scores(res.theta, nb_labels[:, :k], C)
            out.by_method_k[("nnk", k)] = MethodChunk(
                top=solver.topk_classes(scores, TOP, rule=opts.top5_rule),
                scores=scores,
                theta=res.theta,
                support=res.support_size,
                solver_stats=getattr(res, "stats", None),
            )
            timing["nnk_fallbacks"] += int(np.count_nonzero(getattr(res, "fallback", False)))
        timing["nnk_s"] += time.perf_counter() - t0
    return out


#: a pruning solution "fails the exact KKT certificate" above this relative residual. On the
#: sample store (k = 50) the float32 solves leave stationarity residuals of ~1e-7 on the
#: support, while pruned neighbors that should have come back have gradients of 1e-3..2e-2:
#: the tolerance separates the algorithm's misses from rounding
PRUNING_KKT_TOL = 1e-4


@dataclass
class _PrunedK:
    theta: np.ndarray
    support_size: np.ndarray
    stats: tuple


def _pruning_path(q, X, finite_sims, missing, k_values, opts):
    """The NNK paper's solver at every k, with what it costs against the exact solution.

    Each k starts from all k neighbors (as the published code does for its one k), from
    float32 kernel blocks; the exact float64 problem is solved too, to count the queries
    whose pruning weights fail its KKT certificate and the mean objective gap.
    """
    G32, g32 = cosine_blocks_float32(q, X)
    G, g = solver.kernel_blocks(q, X, kernel="cosine", sims=finite_sims)
    _mask_missing(G, g, missing)
    exact = solver.nnk_solve_path(G, g, k_values, tol=opts.tol)
    out = []
    for k, ex in zip(k_values, exact, strict=True):
        Gk32, gk32 = G32[:, :k, :k].copy(), g32[:, :k].copy()
        _mask_missing(Gk32, gk32, missing[:, :k])
        res = pruning_solve(Gk32, gk32)
        theta = res.theta
        Gk, gk = G[:, :k, :k], g[:, :k]
        lam = np.einsum("bij,bj->bi", Gk, theta) - gk
        scale = np.abs(gk).max(axis=1)
        scale = np.where(scale > 0, scale, 1.0)
        viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0)).max(axis=1) / scale
        objective = 0.5 * np.einsum("bi,bi->b", theta, lam + gk) - np.einsum("bi,bi->b", gk, theta)
        gap = np.maximum(objective - ex.objective, 0.0)
        out.append(
            _PrunedK(
                theta=theta,
                support_size=res.support_size,
                stats=(int(np.count_nonzero(viol > PRUNING_KKT_TOL)), float(gap.sum()), len(theta), PRUNING_KKT_TOL),
            )
        )
    return out


def _mask_missing(G: np.ndarray, g: np.ndarray, missing: np.ndarray) -> None:
    """Neighbors an approximate index did not return get K = identity row, g = 0, hence theta = 0."""
    if not missing.any():
        return
    b, j = np.nonzero(missing)
    G[b, j, :] = 0.0
    G[b, :, j] = 0.0
    G[b, j, j] = 1.0
    g[b, j] = 0.0
