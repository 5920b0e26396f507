"""The exact, batched NNK solver (pure numpy/scipy, no I/O).

For each query, with ``G`` the kernel among its k neighbors and ``g`` the kernel
between the query and them, the NNK weights are

    theta* = argmin_{theta >= 0}  1/2 theta^T G theta - g^T theta.

``nnk_solve`` runs a Lawson–Hanson primal active-set method on the whole batch at
once (``nnkcli.numerics.active_set``): every iteration is a handful of numpy operations over
the queries still running, and only the rows of ``G`` of variables that entered the
active set are ever read.

Every returned ``theta`` comes with a KKT certificate: ``theta >= 0`` exactly,
``lambda = G theta - g >= -tol * max|g|``, and ``|lambda_j| <= tol * max|g|`` wherever
``theta_j > 0`` (stationarity on the support, which implies complementarity). A query
the batched path cannot certify (iteration limit, a numerically singular active set)
is re-solved on its own by ``scipy.optimize.nnls`` on the equivalent least-squares
problem, built from an eigendecomposition of ``G`` so that singular ``G`` is fine,
and is flagged in ``NnkResult.fallback``.

The kernels (``kernel_blocks``) live in ``nnkcli.numerics.kernels`` and the class scorers
(``knn_scores``, ``nnk_scores``, ``topk_classes``, ``topk_hits``) in
``nnkcli.numerics.scores``; both are re-exported here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from nnkcli.errors import InputError
from nnkcli.numerics.active_set import _ENTER, g_scale, max_steps, solve_batch
from nnkcli.numerics.kernels import check_kernel, kernel_blocks
from nnkcli.numerics.scores import knn_scores, nnk_scores, topk_classes, topk_hits

__all__ = [
    "NnkResult",
    "nnk_solve",
    "nnk_weights",
    "nnk_solve_path",
    "kernel_blocks",
    "knn_scores",
    "nnk_scores",
    "topk_classes",
    "topk_hits",
]

#: nnk_weights builds kernel blocks (8*k*(k+1) bytes a query) in chunks of about this size
CHUNK_BYTES = 64 * 2**20


@dataclass
class NnkResult:
    """NNK weights of a batch of queries and how they were obtained.

    Attributes
    ----------
    theta : ndarray of shape (B, k), float64
        Raw (unnormalised) NNK weights, ``>= 0``; zero outside the support.
    iterations : ndarray of shape (B,), int64
        Iterations of the batched path (``max_iter`` where it ran out of them).
    kkt_residual : ndarray of shape (B,), float64
        ``max_j max(-lambda_j, [theta_j > 0] * |lambda_j|) / max_j |g_j|`` with
        ``lambda = G theta - g``: the largest violation of dual feasibility or of
        stationarity on the support, relative to the scale of ``g``.
    fallback : ndarray of shape (B,), bool
        The query was re-solved by the one-at-a-time fallback.
    objective : ndarray of shape (B,), float64
        ``1/2 theta^T G theta - g^T theta`` at the returned ``theta``.
    tol : float
        The tolerance the certificate was checked against.
    """

    theta: np.ndarray
    iterations: np.ndarray
    kkt_residual: np.ndarray
    fallback: np.ndarray
    objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tol: float = 1e-8

    @property
    def support(self) -> np.ndarray:
        """(B, k) bool: which weights are non-zero."""
        return self.theta > 0

    @property
    def support_size(self) -> np.ndarray:
        """(B,) int64: the number of non-zero weights (the "effective k")."""
        return np.count_nonzero(self.theta > 0, axis=1).astype(np.int64)

    @property
    def certified(self) -> np.ndarray:
        """(B,) bool: the KKT certificate holds within ``tol``."""
        return self.kkt_residual <= self.tol

    @staticmethod
    def concatenate(parts: list[NnkResult]) -> NnkResult:
        """Stack results of consecutive chunks (same k) along the batch axis."""
        if not parts:
            raise InputError("no results to concatenate")
        return NnkResult(
            theta=np.concatenate([p.theta for p in parts]),
            iterations=np.concatenate([p.iterations for p in parts]),
            kkt_residual=np.concatenate([p.kkt_residual for p in parts]),
            fallback=np.concatenate([p.fallback for p in parts]),
            objective=np.concatenate([p.objective for p in parts]),
            tol=parts[0].tol,
        )


def nnk_solve(G, g, *, tol: float = 1e-8, max_iter: int | None = None, warm_start=None) -> NnkResult:
    """Solve ``min_{theta >= 0} 1/2 theta^T G theta - g^T theta`` for a batch of queries.

    Parameters
    ----------
    G : array_like of shape (B, k, k), float32 or float64
        Symmetric positive semidefinite kernel blocks (singular is fine; symmetry is
        assumed, not checked). Only the rows of variables that enter the active set
        are read (and checked for NaN/inf), so leading-block views such as
        ``G_max[:, :k, :k]`` cost nothing to pass; float32 rows are converted to
        float64 as they are read.
    g : array_like of shape (B, k), float32 or float64
        Query-to-neighbor kernel values.
    tol : float, default=1e-8
        Relative KKT tolerance of the certificate (see ``NnkResult.kkt_residual``).
        Internally a variable enters the active set once its gradient exceeds
        ``tol / 100`` (times ``max|g|``), so the objective is accurate even on
        ill-conditioned problems.
    max_iter : int, optional
        Iteration limit per query of the batched path; default ``3 * k + 20``.
        Queries that hit it go to the fallback.
    warm_start : array_like of shape (B, k), bool, optional
        A guess of each query's support, e.g. the support found for fewer neighbors
        padded with False. Wrong guesses only cost iterations: the solution is the same
        as from a cold start whenever the minimiser is unique (for singular ``G`` the
        objective is the same; the weights may differ).

    Returns
    -------
    NnkResult
        ``theta`` (B, k) float64 and per-query diagnostics.

    Notes
    -----
    Memory: the inputs take ``8 * k * (k + 1)`` bytes per query in float64 (320 KiB
    per query at k=200), so callers chunk large batches. The solver's own state does
    not grow with the batch: queries are solved in cohorts of a few hundred (a few
    tens of MiB in all, measured by ``benchmarks/bench_solver.py``), plus the
    ``(B, k)`` outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from nnkcli import kernel_blocks, nnk_solve
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 8, 16))
    >>> x /= np.linalg.norm(x, axis=-1, keepdims=True)
    >>> G, g = kernel_blocks(x[:, 0], x[:, 1:])   # query = row 0, 7 neighbors
    >>> res = nnk_solve(G, g)
    >>> res.theta.shape, bool(res.certified.all())
    ((4, 7), True)
    """
    G, g, tol, warm = _validate(G, g, tol, warm_start)
    B, k = g.shape
    max_iter = max_steps(max_iter, k)
    out = solve_batch(G, g, tol, max_iter, warm)
    res = NnkResult(
        theta=out.theta,
        iterations=out.iterations,
        kkt_residual=out.residual,
        fallback=out.failed,
        objective=out.objective,
        tol=tol,
    )
    need = res.fallback | ~(res.kkt_residual <= tol)
    if need.any():
        res.fallback = need
        for b in np.flatnonzero(need):
            # what the batched path found (if anything) competes with the fallback
            prior = (res.theta[b].copy(), res.kkt_residual[b], res.objective[b])
            res.theta[b], res.kkt_residual[b], res.objective[b] = _solve_one(G[b], g[b], tol, int(b), max_iter, prior)
        bad = ~(res.kkt_residual <= tol)
        if bad.any():
            warnings.warn(
                f"NNK: {int(bad.sum())} of {B} queries could not be certified to tol={tol:g} "
                f"(largest relative KKT residual {np.nanmax(res.kkt_residual):.2e}); see NnkResult.kkt_residual",
                RuntimeWarning,
                stacklevel=2,
            )
    res.tol = tol
    return res


def nnk_weights(
    query,
    neighbors,
    *,
    kernel: str = "cosine",
    tol: float = 1e-8,
    sims=None,
    max_iter: int | None = None,
    chunk_size: int | None = None,
) -> NnkResult:
    """NNK weights of each query over its neighbors, from feature vectors.

    Builds the kernel blocks with ``kernel_blocks`` and solves them with
    ``nnk_solve``, a chunk of queries at a time so that the float64 blocks stay
    near ``CHUNK_BYTES`` (64 MiB).

    Parameters
    ----------
    query : array_like of shape (B, d), float32 or float64
        Query features, rows L2-normalised by the caller (not renormalised here).
    neighbors : array_like of shape (B, k, d), float32 or float64
        Each query's k neighbors, rows L2-normalised, nearest first.
    kernel : {"cosine", "gaussian"}, default="cosine"
        See ``kernel_blocks``.
    tol : float, default=1e-8
        Relative KKT tolerance, see ``nnk_solve``.
    sims : array_like of shape (B, k), optional
        Query–neighbor inner products if already known (e.g. from the search).
    max_iter : int, optional
        See ``nnk_solve``.
    chunk_size : int, optional
        Queries per chunk; default sized to ``CHUNK_BYTES``.

    Returns
    -------
    NnkResult
    """
    check_kernel(kernel)
    query = np.asarray(query)
    neighbors = np.asarray(neighbors)
    if query.ndim != 2 or neighbors.ndim != 3:
        raise InputError(
            f"query must be (B, d) and neighbors (B, k, d), got shapes {query.shape} and {neighbors.shape}"
        )
    B, k = neighbors.shape[:2]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (8 * max(k, 1) * (k + 1 + neighbors.shape[2])))
    elif int(chunk_size) < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")
    parts = []
    for lo in range(0, B, int(chunk_size)) if B else [0]:
        hi = lo + int(chunk_size)
        G, g = kernel_blocks(
            query[lo:hi], neighbors[lo:hi], kernel=kernel, sims=None if sims is None else np.asarray(sims)[lo:hi]
        )
        parts.append(nnk_solve(G, g, tol=tol, max_iter=max_iter))
    return NnkResult.concatenate(parts)


def nnk_solve_path(G, g, k_values, *, tol: float = 1e-8, max_iter: int | None = None) -> list[NnkResult]:
    """NNK weights over the leading k neighbors, for every k in ``k_values``, from one block.

    For a k-independent kernel (cosine) the problem at k is the leading ``(k, k)``
    block of the one at ``max(k_values)``, so a sweep needs one kernel block. Going
    from k to k' > k, the weights found at k (padded with zeros) stay optimal unless one
    of the new neighbors has a positive gradient ``w_j = g_j - G[j, :k] theta``; only
    the queries where one does are re-solved, warm-started from the support at k. Each
    result carries its own KKT certificate, as from ``nnk_solve`` at that k.

    Parameters
    ----------
    G : array_like of shape (B, K, K)
        Kernel blocks at ``K >= max(k_values)`` (a view is fine; only rows are read).
    g : array_like of shape (B, K)
    k_values : sequence of int
        Increasing neighbor counts, each in 1..K.
    tol, max_iter
        As for ``nnk_solve``.

    Returns
    -------
    list of NnkResult
        One per k, in the order of ``k_values``; ``theta`` of the i-th has shape (B, k_i).
    """
    g = np.asarray(g)
    ks = [int(k) for k in k_values]
    if not ks or any(b <= a for a, b in pairwise(ks)) or ks[0] < 1 or ks[-1] > g.shape[1]:
        raise InputError(f"k_values must increase within 1..{g.shape[1]}, got {ks}")
    results: list[NnkResult] = []
    prev: NnkResult | None = None
    for k in ks:
        Gk, gk = G[:, :k, :k], g[:, :k]
        if prev is None:
            res = nnk_solve(Gk, gk, tol=tol, max_iter=max_iter)
        else:
            kp = prev.theta.shape[1]
            B = gk.shape[0]
            theta = np.zeros((B, k))
            theta[:, :kp] = prev.theta
            # gradient of the new variables at the old optimum; G is symmetric, so the
            # rows of the new variables restricted to the old ones are what is needed
            w_new = np.asarray(gk[:, kp:], dtype=np.float64) - np.einsum(
                "bjs,bs->bj", np.asarray(G[:, kp:k, :kp], dtype=np.float64), prev.theta
            )
            gscale = g_scale(np.asarray(gk, dtype=np.float64))
            # the same entry rule the active-set engine uses, so the result is what a
            # cold solve at k finds
            stays = (w_new <= _ENTER * tol * gscale[:, None]).all(axis=1)
            res = NnkResult(
                theta=theta,
                iterations=np.zeros(B, dtype=np.int64),
                kkt_residual=np.maximum(prev.kkt_residual, np.maximum(w_new, 0.0).max(axis=1, initial=0.0) / gscale),
                fallback=np.zeros(B, dtype=bool),
                objective=prev.objective.copy(),
                tol=tol,
            )
            moved = np.flatnonzero(~stays)
            if moved.size:
                warm = np.zeros((moved.size, k), dtype=bool)
                warm[:, :kp] = prev.theta[moved] > 0
                sub = nnk_solve(Gk[moved], gk[moved], tol=tol, max_iter=max_iter, warm_start=warm)
                res.theta[moved] = sub.theta
                res.iterations[moved] = sub.iterations
                res.kkt_residual[moved] = sub.kkt_residual
                res.fallback[moved] = sub.fallback
                res.objective[moved] = sub.objective
        results.append(res)
        prev = res
    return results


# --------------------------------------------------------------------------- validation


def _validate(G, g, tol, warm_start):
    G = np.asarray(G)
    g = np.asarray(g)
    if g.ndim != 2 or G.ndim != 3 or G.shape != (g.shape[0], g.shape[1], g.shape[1]):
        raise InputError(f"G must be (B, k, k) and g (B, k); got shapes {G.shape} and {g.shape}")
    for name, a in (("G", G), ("g", g)):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise InputError(f"{name} must be a real float array, got dtype {a.dtype}")
    if g.shape[1] < 1:
        raise InputError("k must be at least 1 (no neighbors given)")
    if not np.issubdtype(G.dtype, np.floating):
        G = G.astype(np.float64)
    g = np.asarray(g, dtype=np.float64)
    if not np.isfinite(g).all():
        b = int(np.flatnonzero(~np.isfinite(g).all(axis=1))[0])
        raise InputError(f"g holds NaN or infinite values (query {b})", hint="check the features for NaN/inf")
    tol = float(tol)
    if not tol > 0:
        raise InputError(f"tol must be positive, got {tol}")
    warm = None
    if warm_start is not None:
        warm = np.asarray(warm_start)
        if warm.shape != g.shape:
            raise InputError(f"warm_start must have the shape of g {g.shape}, got {warm.shape}")
        warm = warm.astype(bool)
    return G, g, tol, warm


# --------------------------------------------------------------------------- fallback


def _solve_one(Gq, gq, tol, index, max_iter, prior=None):
    """Exact path for one query: scipy NNLS on the least-squares form of the QP.

    ``G = V diag(e) V^T`` (eigendecomposition, so singular ``G`` is fine); with
    ``A = diag(sqrt(e)) V^T`` and ``b = diag(1/sqrt(e)) V^T g`` over the numerically
    non-zero eigenvalues, ``1/2 |A theta - b|^2 = 1/2 theta^T G theta - g^T theta +
    const`` (``g`` lies in the range of a kernel Gram matrix). Working on ``A`` rather
    than ``G`` halves the condition number's exponent, which is what ill-conditioned
    queries need. If NNLS's answer fails the KKT check against the original ``G`` and
    ``g`` (it stops at its own tolerance), the active-set path is rerun from its
    support. Of the candidates (with ``prior``, the batched path's
    ``(theta, residual, objective)``), a certified one with the lowest objective
    wins, else the one with the smallest residual. Returns ``(theta, kkt_residual,
    objective)``.
    """
    from scipy.optimize import nnls

    Gq = np.asarray(Gq, dtype=np.float64)
    gq = np.asarray(gq, dtype=np.float64)
    k = gq.size
    e, V = np.linalg.eigh(0.5 * (Gq + Gq.T))
    emax = max(float(e[-1]), 0.0)
    if e[0] < -1e-6 * k * emax:
        raise InputError(
            f"G is not positive semidefinite (query {index}: eigenvalue {e[0]:.3g})",
            hint="NNK needs a positive semidefinite kernel matrix",
        )
    keep = e > k * np.finfo(float).eps * emax
    theta = np.zeros(k)
    if keep.any():
        se = np.sqrt(e[keep])
        theta = nnls(se[:, None] * V[:, keep].T, (V[:, keep].T @ gq) / se, maxiter=50 * k + 100)[0]
    candidates = [(theta,) + _certify(Gq, gq, theta)]
    if candidates[0][1] > tol:
        again = solve_batch(Gq[None], gq[None], tol, max_iter, (theta > 0)[None])
        if not again.failed[0]:
            candidates.append((again.theta[0], float(again.residual[0]), float(again.objective[0])))
    if prior is not None and np.isfinite(prior[1]):
        candidates.append(prior)
    best = min(candidates, key=lambda c: (c[1] > tol, c[2] if c[1] <= tol else c[1]))
    return best


def _certify(Gq, gq, theta):
    """``(relative KKT residual, objective)`` of one query's ``theta``."""
    lam = Gq @ theta - gq
    scale = np.abs(gq).max()
    scale = scale if scale > 0 else 1.0
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    return float(viol.max() / scale), float(0.5 * theta @ (lam + gq) - gq @ theta)
