"""Independent oracles for the NNK problem of the cosine kernel (shared by the solver tests).

Nothing here shares code with ``nnkcli``: the kernel blocks are built by a plain loop in
float64, the weights come from ``scipy.optimize.nnls`` on the feature-space least-squares
form (A = [1; X^T] / sqrt(2), b = [1; q] / sqrt(2), no Gram matrix), and the KKT residual
is recomputed from the loop-built blocks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def blocks64(q, X):
    """Float64 G (B, k, k) and g (B, k) of queries q (B, d) and neighbors X (B, k, d), by a plain loop."""
    B, k, _ = X.shape
    Xd, qd = X.astype(np.float64), q.astype(np.float64)
    G = np.empty((B, k, k))
    g = np.empty((B, k))
    for b in range(B):
        for i in range(k):
            g[b, i] = (1 + Xd[b, i] @ qd[b]) / 2
            for j in range(k):
                G[b, i, j] = (1 + Xd[b, i] @ Xd[b, j]) / 2
    return G, g


def nnls_weights(q, X):
    """NNK weights (B, k) from scipy's NNLS on the feature-space least-squares form."""
    B, k, _ = X.shape
    out = np.zeros((B, k))
    for b in range(B):
        A = np.vstack([np.ones(k), X[b].astype(np.float64).T]) / np.sqrt(2)
        rhs = np.concatenate([[1.0], q[b].astype(np.float64)]) / np.sqrt(2)
        out[b] = nnls(A, rhs, maxiter=100 * k)[0]
    return out


def kkt(G, g, theta):
    """(B,) relative KKT residual: max violation of lambda = G theta - g over max|g| (1 where g = 0)."""
    lam = np.einsum("bij,bj->bi", G, theta) - g
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    scale = np.abs(g).max(axis=1)
    return viol.max(axis=1) / np.where(scale > 0, scale, 1.0)
