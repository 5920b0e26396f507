"""Class scores from neighbor weights, and top-k class lists (pure numpy).

Neighbor labels are class ids ``0..C-1``; ``-1`` marks an unlabelled training row,
which never gives mass to any class.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from nnkcli.errors import InputError

#: the classifiers scored here (NNK and weighted k-NN); every other list of methods derives from it
METHODS = ("nnk", "knn")
WEIGHTINGS = ("exp", "similarity", "uniform")
#: how top-k lists treat classes without score: see ``topk_classes``
TOP5_RULES = ("strict", "inclusive")
TOP = 5  # classes kept per query by the evaluation (top-5 accuracy)


def knn_scores(
    sims, neighbor_labels, n_classes: int, *, weighting: str = "exp", temperature: float = 0.07
) -> np.ndarray:
    """Weighted k-NN class scores, DINO's ``eval_knn`` formula.

    ``score[b, c] = sum_j w(s[b, j]) * [y[b, j] == c]`` with ``w(s) = exp(s / T)``
    (``"exp"``, DINO's default, ``T = 0.07``), ``w(s) = s`` (``"similarity"``) or
    ``w(s) = 1`` (``"uniform"``: majority vote).

    Parameters
    ----------
    sims : array_like of shape (B, k), float
        Cosine similarities of each query to its k neighbors.
    neighbor_labels : array_like of shape (B, k), int
        Class ids of the neighbors, ``-1`` for unlabelled rows (ignored).
    n_classes : int
        Number of classes C.
    weighting : {"exp", "similarity", "uniform"}, default="exp"
    temperature : float, default=0.07
        T of the ``"exp"`` weighting; must be positive.

    Returns
    -------
    ndarray of shape (B, C), float64
        Unnormalised class scores.
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}", hint=f"choose one of: {', '.join(WEIGHTINGS)}")
    s = np.asarray(sims, dtype=np.float64)
    labels = _labels(neighbor_labels, n_classes, s.shape, "sims")
    return _class_sums(knn_weights(s, weighting, temperature), labels, int(n_classes))


def knn_scores_path(
    sims, neighbor_labels, n_classes: int, k_values, *, weighting: str = "exp", temperature: float = 0.07
) -> list[np.ndarray]:
    """``knn_scores`` of the leading k neighbors for every k of ``k_values``, bit for bit, in one pass.

    A sweep asks for the scores at many k of the same neighbors (10, 20, ..., 200): each
    k's scores are the previous k's plus the votes of the neighbors between them, added
    in neighbor order (``np.add.at`` adds one element after another), which is the order
    ``knn_scores`` sums them in. So every k costs its new neighbors only, and the weights
    ``w(s)`` are computed once, at the largest k.

    Parameters
    ----------
    sims, neighbor_labels, n_classes, weighting, temperature
        As for ``knn_scores``, over at least ``max(k_values)`` neighbors.
    k_values : sequence of int
        Increasing neighbor counts within 1..k.

    Returns
    -------
    list of ndarray (B, C) float64, one per k
    """
    ks = [int(k) for k in k_values]
    s = np.asarray(sims, dtype=np.float64)
    if s.ndim != 2 or not ks or ks[0] < 1 or ks[-1] > s.shape[1] or any(b <= a for a, b in pairwise(ks)):
        raise InputError(f"k_values must increase within 1..{s.shape[1] if s.ndim == 2 else 0}, got {ks}")
    B, C = s.shape[0], int(n_classes)
    labels = _labels(neighbor_labels, n_classes, s.shape, "sims")[:, : ks[-1]]
    w = knn_weights(s[:, : ks[-1]], weighting, temperature)
    running = np.zeros(B * C)
    rows = np.arange(B, dtype=np.int64)[:, None] * C
    out, lo = [], 0
    for k in ks:
        lab = labels[:, lo:k]
        valid = lab >= 0
        np.add.at(running, (rows + lab)[valid], w[:, lo:k][valid])
        out.append(running.reshape(B, C).copy())
        lo = k
    return out


def knn_weights(s: np.ndarray, weighting: str, temperature: float) -> np.ndarray:
    """The vote ``w(s)`` of each neighbor (see ``knn_scores``), checked finite."""
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}", hint=f"choose one of: {', '.join(WEIGHTINGS)}")
    if weighting == "exp":
        temperature = float(temperature)
        if not temperature > 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        with np.errstate(over="ignore"):  # reported below as an InputError, not a warning
            w = np.exp(s / temperature)
    elif weighting == "similarity":
        w = s
    else:
        w = np.ones_like(s)
    if not np.isfinite(w).all():
        raise InputError(
            "sims holds NaN or infinite values (or exp(s/T) overflows)",
            hint="check the similarities and the temperature",
        )
    return w


def nnk_scores(theta, neighbor_labels, n_classes: int) -> np.ndarray:
    """NNK class scores ``p_c = sum_j theta_j [y_j = c] / sum_j theta_j``.

    The denominator sums over all neighbors, unlabelled ones included, so a query
    whose weight falls partly on unlabelled rows has scores summing to less than 1
    (the ranking of classes does not depend on this). A query whose weights are all
    zero gets all-zero scores.

    Parameters
    ----------
    theta : array_like of shape (B, k), float
        Non-negative NNK weights (``NnkResult.theta``).
    neighbor_labels : array_like of shape (B, k), int
        Class ids of the neighbors, ``-1`` for unlabelled rows.
    n_classes : int
        Number of classes C.

    Returns
    -------
    ndarray of shape (B, C), float64
    """
    theta = np.asarray(theta, dtype=np.float64)
    labels = _labels(neighbor_labels, n_classes, theta.shape, "theta")
    if not np.isfinite(theta).all() or (theta < 0).any():
        raise InputError("theta must be finite and non-negative")
    sums = _class_sums(theta, labels, int(n_classes))
    total = theta.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, sums / total[:, None], 0.0)


def topk_classes(scores, k: int = 5, *, rule: str = "strict") -> np.ndarray:
    """The k best classes of each query, best first, ties to the lower class id.

    ``rule="strict"`` (default): a class whose score is ``<= 0`` is never listed (its
    slot holds ``-1``), so a zero-score class can never count as a top-k hit (the DINO
    k-NN evaluation had that bug, facebookresearch/dino#89).
    ``rule="inclusive"``: every class is ranked, zero-score ones included, which is what
    solo-learn, VISSL, DINOv2 and the NNK paper's code compute (they sort all C class
    scores); when fewer than k classes get any weight, the remaining slots go to
    zero-score classes in class-id order, which inflates top-k.

    Parameters
    ----------
    scores : array_like of shape (B, C), float
    k : int, default=5
        How many classes to list; columns beyond C are ``-1``.
    rule : {"strict", "inclusive"}, default="strict"

    Returns
    -------
    ndarray of shape (B, k), int64
    """
    if rule not in TOP5_RULES:
        raise InputError(f"unknown top-5 rule {rule!r}", hint=f"choose one of: {', '.join(TOP5_RULES)}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise InputError(f"scores must be (B, C), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise InputError("scores hold NaN values")
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    B, C = scores.shape
    order = _best_classes(scores, min(k, C))
    if rule == "strict":
        best = np.take_along_axis(scores, order, axis=1)
        top = np.where(best > 0, order, -1).astype(np.int64)
    else:
        top = order.astype(np.int64)
    if k > C:
        top = np.concatenate([top, np.full((B, k - C), -1, dtype=np.int64)], axis=1)
    return top


#: below this many classes a stable sort of every class is as quick as repeated maxima
SORT_CLASSES = 32


def _best_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` (<= C) best classes of each row of ``scores`` (B, C): score descending, ties by class id.

    k rounds of a row-wise argmax (numpy's returns the first maximum, so the lowest class id
    among ties), each taking its class out of the next round: ~15 µs for a chunk of 64
    queries and 100 classes, against ~80 for a partition and ~450 for a full sort -- it runs
    for every (method, k) of a chunk, 40 times in a 20-k sweep. A score of -inf would be
    indistinguishable from a class already taken, so such rows go by the stable sort.
    """
    B, C = scores.shape
    if C < SORT_CLASSES or k >= C or (scores.size and scores.min() == -np.inf):
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties keep class-id order
    left = scores.copy()
    rows = np.arange(B)
    out = np.empty((B, k), dtype=np.int64)
    for i in range(k):
        best = left.argmax(axis=1)
        out[:, i] = best
        left[rows, best] = -np.inf
    return out


def topk_hits(top, labels) -> np.ndarray:
    """Cumulative hit matrix of top-k class lists.

    ``hits[b, i]`` is True when the true class of query b is among ``top[b, :i+1]``,
    so ``hits[:, 0]`` is top-1 correctness and ``hits[:, 4]`` top-5. A ``-1`` slot
    (no class) is never a hit, and neither is anything for a query labelled ``-1``.

    Parameters
    ----------
    top : array_like of shape (B, k), int
        From ``topk_classes``.
    labels : array_like of shape (B,), int
        True class ids of the queries.

    Returns
    -------
    ndarray of shape (B, k), bool
    """
    top = np.asarray(top)
    labels = np.asarray(labels)
    if top.ndim != 2 or labels.shape != top.shape[:1]:
        raise InputError(f"top must be (B, k) and labels (B,), got shapes {top.shape} and {labels.shape}")
    hit = (top == labels[:, None]) & (top >= 0)
    return np.logical_or.accumulate(hit, axis=1) if hit.size else hit


def _labels(neighbor_labels, n_classes, shape, other: str) -> np.ndarray:
    labels = np.asarray(neighbor_labels)
    if labels.shape != shape or len(shape) != 2:
        raise InputError(f"neighbor_labels must have the shape of {other} (B, k) = {shape}, got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"neighbor_labels must be integers, got dtype {labels.dtype}")
    if int(n_classes) < 1:
        raise InputError(f"n_classes must be at least 1, got {n_classes}")
    if labels.size and (labels.min() < -1 or labels.max() >= int(n_classes)):
        raise InputError(
            f"neighbor_labels must lie in -1..{int(n_classes) - 1}, got values in {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64, copy=False)


def _class_sums(w: np.ndarray, labels: np.ndarray, C: int) -> np.ndarray:
    """(B, C) sums of the weights ``w`` (B, k) per class, skipping label -1."""
    B = w.shape[0]
    valid = labels >= 0
    flat = (np.arange(B, dtype=np.int64)[:, None] * C + labels)[valid]
    sums = np.bincount(flat, weights=w[valid], minlength=B * C)
    return sums.astype(np.float64, copy=False).reshape(B, C)  # bincount of nothing is int
