"""Kernel blocks of the NNK problem (pure numpy).

For each query the NNK problem needs ``G`` (k, k), the kernel among its k neighbors,
and ``g`` (k,), the kernel between the query and them. Both are computed in float64
whatever the input dtype: with float32 Gram entries a rank-deficient ``G`` (k > d+1)
would no longer hold ``g`` in its range and the weights would chase rounding noise.
"""

from __future__ import annotations

import numpy as np

from nnkcli.errors import InputError

KERNELS = ("cosine", "gaussian")


#: rows normalised at a time: the squares of one block are the only temporary (np.linalg.norm of a whole
#: (n, d) array first squares all of it, a second array as large as the features)
NORMALIZE_BLOCK_ROWS = 16384


def normalize_rows(x: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """L2-normalize rows (float32); all-zero or non-finite rows are an error (cosine undefined).

    A new array, or with ``copy=False`` ``x`` itself where it is a writable float32 array the
    caller owns (a split just read). The norms are ``np.linalg.norm``'s, a block of rows at a
    time: the same values as over the whole array, without its (n, d) temporary.
    """
    if copy or not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable):
        x = np.array(x, dtype=np.float32, copy=True)
    norms = np.empty(x.shape[0], dtype=np.float32)
    for i in range(0, x.shape[0], NORMALIZE_BLOCK_ROWS):
        norms[i : i + NORMALIZE_BLOCK_ROWS] = np.linalg.norm(x[i : i + NORMALIZE_BLOCK_ROWS], axis=1)
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if bad.size:
        raise InputError(
            f"{bad.size} feature rows are all-zero or not finite (first: row {int(bad[0])}); "
            "cosine similarity is undefined",
            hint="remove those rows or re-extract the features",
        )
    x /= norms[:, None]
    return x


def check_kernel(kernel: str) -> str:
    """``kernel`` if it is one of ``KERNELS``; InputError naming the choices otherwise."""
    if kernel not in KERNELS:
        raise InputError(f"unknown kernel {kernel!r}", hint=f"choose one of: {', '.join(KERNELS)}")
    return kernel


def kernel_blocks(query, neighbors, *, kernel: str = "cosine", sims=None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel blocks ``G`` and ``g`` of a batch of queries.

    Parameters
    ----------
    query : array_like of shape (B, d), float32 or float64
        Query features. Rows must be L2-normalised by the caller: they are *not*
        renormalised here, so that what is solved is exactly what was passed.
    neighbors : array_like of shape (B, k, d), float32 or float64
        Each query's k neighbors (rows L2-normalised), nearest first.
    kernel : {"cosine", "gaussian"}, default="cosine"
        ``"cosine"``: ``K(a, b) = (1 + <a, b>) / 2``, i.e. ``(1 + cos) / 2`` in [0, 1]
        for unit rows (a valid positive semidefinite kernel for any rows: the linear
        kernel of ``[1, a] / sqrt(2)``).
        ``"gaussian"``: ``K(a, b) = exp(-|a - b|^2 / (2 sigma^2))`` with, per query,
        ``sigma`` = the distance to its farthest (k-th) given neighbor / 3; when all
        neighbors coincide with the query (``sigma = 0``), ``sigma = 1``.
    sims : array_like of shape (B, k), optional
        ``<query, neighbor>`` inner products if already known (e.g. re-ranked
        float64 similarities); saves ``B * k * d`` work. float32 values from an
        approximate search make ``g`` slightly inconsistent with ``G``; the weights are
        then exact for that slightly perturbed problem.

    Returns
    -------
    G : ndarray of shape (B, k, k), float64
        Symmetric positive semidefinite; a fresh, writable array.
    g : ndarray of shape (B, k), float64
        Fresh, writable.

    Notes
    -----
    Memory: ``8 * B * k * (k + 1)`` bytes for the result; float32 neighbors are
    widened one query at a time. Cost: ``B * k * (k + 1) * d / 2`` multiply-adds (the
    Gram matrices, by symmetric rank-k updates).
    """
    check_kernel(kernel)
    q = np.asarray(_float_array(query, "query", 2), dtype=np.float64)
    N = _float_array(neighbors, "neighbors", 3)
    if N.shape[0] != q.shape[0] or N.shape[2] != q.shape[1]:
        raise InputError(
            f"neighbors must be (B, k, d) = ({q.shape[0]}, k, {q.shape[1]}) for query of shape {q.shape}, got {N.shape}"
        )
    B, k, d = N.shape
    if sims is not None:
        sims = np.array(_float_array(sims, "sims", 2), dtype=np.float64)
        if sims.shape != (B, k):
            raise InputError(f"sims must have shape {(B, k)}, got {sims.shape}")
    gram, s = _gram(N, q, sims)
    if kernel == "cosine":
        gram += 1.0
        gram *= 0.5
        s += 1.0
        s *= 0.5
        return gram, s
    nn = np.diagonal(gram, axis1=1, axis2=2).copy()  # squared norms of the neighbors
    nq = np.einsum("bd,bd->b", q, q)
    dq = np.maximum(nq[:, None] + nn - 2.0 * s, 0.0)
    D = nn[:, :, None] + nn[:, None, :] - 2.0 * gram
    np.maximum(D, 0.0, out=D)
    D[:, np.arange(k), np.arange(k)] = 0.0  # exactly 1 on the diagonal
    two_sigma2 = 2.0 * dq.max(axis=1, initial=0.0) / 9.0
    two_sigma2 = np.where(two_sigma2 > 0, two_sigma2, 2.0)  # sigma = 0: all at the query
    D /= -two_sigma2[:, None, None]
    G = np.exp(D, out=D)
    g = np.exp(-dq / two_sigma2[:, None])
    return G, g


def _gram(N, q, sims):
    """Gram matrices ``N N^T`` (B, k, k) and, unless given, ``sims = N q`` (B, k), in float64.

    Per query, ``x @ x.T`` runs as one symmetric rank-k update (BLAS syrk: half the
    multiplications of a general product, exactly symmetric) on a float64 copy of one
    query's neighbors that stays in cache; tiny blocks go through one batched product
    instead, where the per-call overhead would dominate.
    """
    B, k, d = N.shape
    if k * k * d < 2**16:
        X = np.asarray(N, dtype=np.float64)
        G = np.matmul(X, X.transpose(0, 2, 1))
        return G, (np.matmul(X, q[:, :, None])[:, :, 0] if sims is None else sims)
    G = np.empty((B, k, k))
    s = np.empty((B, k)) if sims is None else sims
    for i in range(B):
        x = np.asarray(N[i], dtype=np.float64)
        G[i] = x @ x.T
        if sims is None:
            s[i] = x @ q[i]
    return G, s


def _float_array(x, name: str, ndim: int) -> np.ndarray:
    """``x`` as a finite real array (any float dtype) with ``ndim`` dimensions, or an InputError."""
    a = np.asarray(x)
    if a.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    elif not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{name} must be a real float array, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} holds NaN or infinite values", hint="check the features for NaN/inf")
    return a
