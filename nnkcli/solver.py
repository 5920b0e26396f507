"""The exact, batched NNK solver (pure numpy/scipy, no I/O).

For each query, with ``G`` the kernel among its k neighbours and ``g`` the kernel
between the query and them, the NNK weights are

    theta* = argmin_{theta >= 0}  1/2 theta^T G theta - g^T theta.

``nnk_solve`` runs a Lawson–Hanson primal active-set method on a whole batch at once:
every iteration is a handful of numpy operations over all queries still running (one
entering variable per query, a batched solve on the active set only, a step back
when a coefficient would turn negative); queries leave the batch when converged.
Only the kernel columns of variables that entered the active set are read, so the
work per query is about ``k * s`` per iteration for a support of size ``s``, not
``k**2``.

Every returned ``theta`` comes with a KKT certificate: ``theta >= 0`` exactly,
``lambda = G theta - g >= -tol * max|g|`` and ``|lambda_j| <= tol * max|g|`` wherever
``theta_j > 0`` (stationarity on the support, which implies complementarity). A query
the batched path cannot certify (iteration limit, a numerically singular active set)
is re-solved one at a time by ``scipy.optimize.nnls`` on the equivalent least-squares
problem built from an eigendecomposition of ``G`` (exact for singular ``G``) and is
flagged in ``NnkResult.fallback``.

The kernels (``kernel_blocks``) live in ``nnkcli.kernels`` and the class scorers
(``knn_scores``, ``nnk_scores``, ``topk_classes``, ``topk_hits``) in
``nnkcli.scores``; both are re-exported here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from nnkcli.errors import InputError
from nnkcli.kernels import KERNELS, kernel_blocks
from nnkcli.scores import knn_scores, nnk_scores, topk_classes, topk_hits

__all__ = [
    "NnkResult",
    "nnk_solve",
    "nnk_weights",
    "kernel_blocks",
    "knn_scores",
    "nnk_scores",
    "topk_classes",
    "topk_hits",
]

#: bytes of solver input per query is 8*k*(k+1); nnk_weights chunks to stay near this
CHUNK_BYTES = 64 * 2**20

_OUTER, _INNER, _WARM, _DONE = 0, 1, 2, 3
#: Schur complement / diagonal below which an entering row counts as dependent
_DEPENDENT = 1e-12
#: the active-set solve must satisfy |G_PP z - g_P| <= _EXACT * tol * max|g|
_EXACT = 1e-3


@dataclass
class NnkResult:
    """NNK weights of a batch of queries and how they were obtained.

    Attributes
    ----------
    theta : ndarray of shape (B, k), float64
        Raw (unnormalised) NNK weights, ``>= 0``; zero outside the support.
    iterations : ndarray of shape (B,), int64
        Active-set iterations of the batched path (``max_iter`` when it gave up).
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
        Query-to-neighbour kernel values.
    tol : float, default=1e-8
        Relative KKT tolerance (see ``NnkResult.kkt_residual``); also the threshold a
        variable's gradient must exceed (times ``max|g|``) to enter the active set.
    max_iter : int, optional
        Iteration limit of the batched path; default ``3 * k + 20``. Queries that hit
        it go to the fallback.
    warm_start : array_like of shape (B, k), bool, optional
        A guess of each query's support, e.g. the support found for fewer neighbours
        padded with False. Wrong guesses only cost iterations: the solution is the same
        as from a cold start whenever the minimiser is unique (for singular ``G`` the
        objective is the same; the weights may differ).

    Returns
    -------
    NnkResult
        ``theta`` (B, k) float64 and per-query diagnostics.

    Notes
    -----
    Memory: besides the inputs, about ``8 * B * k * (s + 8)`` bytes for a support of
    size ``s``; the inputs themselves take ``8 * k * (k + 1)`` bytes per query in
    float64 (320 KiB per query at k=200), so callers chunk large batches.
    """
    G, g, tol, warm = _validate(G, g, tol, warm_start)
    B, k = g.shape
    if max_iter is None:
        max_iter = 3 * k + 20
    elif int(max_iter) < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
    res = _active_set_batch(G, g, tol, int(max_iter), warm)
    need = res.fallback | ~(res.kkt_residual <= tol)
    if need.any():
        res.fallback = need
        for b in np.flatnonzero(need):
            res.theta[b], res.kkt_residual[b], res.objective[b] = _solve_one(G[b], g[b], tol, int(b))
        bad = ~(res.kkt_residual <= tol)
        if bad.any():
            warnings.warn(
                f"NNK: {int(bad.sum())} of {B} queries could not be certified to tol={tol:g} "
                f"(largest relative KKT residual {np.nanmax(res.kkt_residual):.2e}); see NnkResult.kkt_residual",
                RuntimeWarning, stacklevel=2,
            )
    res.tol = tol
    return res


def nnk_weights(query, neighbors, *, kernel: str = "cosine", tol: float = 1e-8, sims=None,
                max_iter: int | None = None, chunk_size: int | None = None) -> NnkResult:
    """NNK weights of each query over its neighbours, from feature vectors.

    Builds the kernel blocks with ``kernel_blocks`` and solves them with
    ``nnk_solve``, a chunk of queries at a time so that the float64 blocks stay
    near ``CHUNK_BYTES`` (64 MiB).

    Parameters
    ----------
    query : array_like of shape (B, d), float32 or float64
        Query features, rows L2-normalised by the caller (not renormalised here).
    neighbors : array_like of shape (B, k, d), float32 or float64
        Each query's k neighbours, rows L2-normalised, nearest first.
    kernel : {"cosine", "gaussian"}, default="cosine"
        See ``kernel_blocks``.
    tol : float, default=1e-8
        Relative KKT tolerance, see ``nnk_solve``.
    sims : array_like of shape (B, k), optional
        Query–neighbour inner products if already known (e.g. from the search).
    max_iter : int, optional
        See ``nnk_solve``.
    chunk_size : int, optional
        Queries per chunk; default sized to ``CHUNK_BYTES``.

    Returns
    -------
    NnkResult
    """
    if kernel not in KERNELS:
        raise InputError(f"unknown kernel {kernel!r}", hint=f"choose one of: {', '.join(KERNELS)}")
    query = np.asarray(query)
    neighbors = np.asarray(neighbors)
    if query.ndim != 2 or neighbors.ndim != 3:
        raise InputError(f"query must be (B, d) and neighbors (B, k, d), got shapes {query.shape} and "
                         f"{neighbors.shape}")
    B, k = neighbors.shape[:2]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (8 * max(k, 1) * (k + 1 + neighbors.shape[2])))
    elif int(chunk_size) < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")
    parts = []
    for lo in range(0, B, int(chunk_size)) if B else [0]:
        hi = lo + int(chunk_size)
        G, g = kernel_blocks(query[lo:hi], neighbors[lo:hi], kernel=kernel,
                             sims=None if sims is None else np.asarray(sims)[lo:hi])
        parts.append(nnk_solve(G, g, tol=tol, max_iter=max_iter))
    return NnkResult.concatenate(parts)


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
        raise InputError("k must be at least 1 (no neighbours given)")
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


# --------------------------------------------------------------------------- batched path

class _State:
    """Per-query state of the queries still running, as arrays over the batch.

    The active set is kept in "slots": slot ``s`` of query ``b`` holds variable
    ``var[b, s]`` (``-1`` = empty), its kernel row ``R[b, s]`` (float64, (k,)) and its
    weight ``th[b, s]``. ``P[b]`` is the active-set matrix ``G[var, var]`` and ``M[b]``
    its inverse, both updated in O(cap**2) as variables enter and leave (bordering /
    Schur-complement formulas), with identity rows and columns for empty slots so
    that neither needs masking; ``gp[b]`` is ``g[var]`` (0 when empty). Removing a
    variable empties its slot; slots are compacted when a query runs out of them.
    Finished queries stay in the arrays (mode ``_DONE``, never updated) until enough
    have finished to be worth a compaction, so that most operations work on views.
    """

    _ARRAYS = ("rows", "g", "thresh", "R", "P", "M", "gp", "var", "th", "count", "in_set", "blocked", "mode")

    def __init__(self, g, thresh, cap):
        B, k = g.shape
        self.rows = np.arange(B)
        self.g = g
        self.thresh = thresh
        self.R = np.zeros((B, cap, k))
        self.P = np.broadcast_to(np.eye(cap), (B, cap, cap)).copy()
        self.M = self.P.copy()
        self.gp = np.zeros((B, cap))
        self.var = np.full((B, cap), -1, dtype=np.int64)
        self.th = np.zeros((B, cap))
        self.count = np.zeros(B, dtype=np.int64)
        self.in_set = np.zeros((B, k), dtype=bool)
        self.blocked = np.zeros((B, k), dtype=bool)
        self.mode = np.full(B, _OUTER, dtype=np.int8)

    def keep(self, mask):
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name)[mask])

    def make_room(self, k):
        """Move filled slots to the front (stable); grow the capacity if still full."""
        if (self.var[:, : self.count.max()] < 0).any():
            order = np.argsort(self.var < 0, axis=1, kind="stable")
            b = np.arange(order.shape[0])[:, None]
            for name in ("var", "th", "gp", "R"):
                setattr(self, name, getattr(self, name)[b, order])
            square = (b[:, :, None], order[:, :, None], order[:, None, :])
            self.P = self.P[square]
            self.M = self.M[square]
            self.count = np.count_nonzero(self.var >= 0, axis=1)
        cap = self.var.shape[1]
        if cap < k and self.count.max() >= cap:
            n, new = self.var.shape[0], min(k, 2 * cap)
            self.R = np.concatenate([self.R, np.zeros((n, new - cap, k))], axis=1)
            for name in ("P", "M"):
                grown = np.broadcast_to(np.eye(new), (n, new, new)).copy()
                grown[:, :cap, :cap] = getattr(self, name)
                setattr(self, name, grown)
            self.gp = np.concatenate([self.gp, np.zeros((n, new - cap))], axis=1)
            self.var = np.concatenate([self.var, np.full((n, new - cap), -1, dtype=np.int64)], axis=1)
            self.th = np.concatenate([self.th, np.zeros((n, new - cap))], axis=1)

    def add(self, G, go, j):
        """Put variable ``j[b]`` in the next slot of every query ``b`` with ``go[b]``.

        Returns ``(slot, ok)`` over the batch: ``ok`` is False where nothing was added,
        including where ``j`` is numerically dependent on the active set (Schur
        complement ~ 0); ``slot`` is -1 there.
        """
        n, k = self.in_set.shape
        b = np.flatnonzero(go)
        if (self.count[b] >= self.var.shape[1]).any():
            self.make_room(k)
        jb, s = j[b], self.count[b]
        Grow = _rows(G, self.rows[b], jb)
        m1 = int(s.max()) + 1
        var = self.var[b, :m1]
        a = np.zeros((n, m1))
        a[b] = np.where(var >= 0, np.take_along_axis(Grow, np.maximum(var, 0), 1), 0.0)
        c = np.ones(n)
        c[b] = Grow[np.arange(b.size), jb]
        M = self.M[:, :m1, :m1]
        u = np.matmul(M, a[:, :, None])[:, :, 0]
        sigma = c - np.einsum("ni,ni->n", a, u)
        ok = go & (sigma > _DEPENDENT * np.abs(c))
        keep_b = ok[b]
        b, jb, s, Grow, a_b = b[keep_b], jb[keep_b], s[keep_b], Grow[keep_b], a[b[keep_b]]
        # inverse of the bordered matrix: M - e_s e_s^T + v v^T / sigma, v = u - e_s
        u[~ok] = 0.0
        u[b, s] = -1.0
        sigma[~ok] = 1.0
        M[b, s, s] = 0.0
        M += u[:, :, None] * (u / sigma[:, None])[:, None, :]
        a_b[np.arange(b.size), s] = c[b]
        self.P[b, s, :m1] = a_b
        self.P[b, :m1, s] = a_b
        self.R[b, s] = Grow
        self.gp[b, s] = self.g[b, jb]
        self.var[b, s] = jb
        self.th[b, s] = 0.0
        self.in_set[b, jb] = True
        self.count[b] += 1
        slot = np.full(n, -1, dtype=np.int64)
        slot[b] = s
        return slot, ok

    def remove(self, b, s):
        """Empty slots ``s`` of queries ``b`` (index arrays of equal length)."""
        while b.size:
            # one slot per query at a time: the inverse downdates of a query chain
            first = np.unique(b, return_index=True)[1]
            bb, ss = b[first], s[first]
            m = int(self.count[bb].max())
            Mb = self.M[bb, :m, :m]
            ar = np.arange(bb.size)
            col, row = Mb[ar, :, ss], Mb[ar, ss, :]
            Mb -= col[:, :, None] * (row / Mb[ar, ss, ss][:, None])[:, None, :]
            Mb[ar, ss, :] = 0.0
            Mb[ar, :, ss] = 0.0
            Mb[ar, ss, ss] = 1.0
            self.M[bb, :m, :m] = Mb
            self.in_set[bb, self.var[bb, ss]] = False
            self.var[bb, ss] = -1
            self.th[bb, ss] = 0.0
            self.gp[bb, ss] = 0.0
            self.P[bb, ss, :] = 0.0
            self.P[bb, :, ss] = 0.0
            self.P[bb, ss, ss] = 1.0
            rest = np.ones(b.size, dtype=bool)
            rest[first] = False
            b, s = b[rest], s[rest]

    def refactor(self, rows):
        """Recompute ``M`` from ``P`` for ``rows``; returns those where it failed."""
        failed = np.zeros(rows.size, dtype=bool)
        try:
            self.M[rows] = np.linalg.inv(self.P[rows])
        except np.linalg.LinAlgError:
            for i, r in enumerate(rows):
                try:
                    self.M[r] = np.linalg.inv(self.P[r])
                except np.linalg.LinAlgError:
                    failed[i] = True
        return failed

    def solve(self, m, run):
        """``z = P^-1 gp`` on the first ``m`` slots, refined where the inverse has drifted.

        Returns ``(z, singular)``; ``singular`` marks running queries whose active-set
        matrix could not be inverted accurately.
        """
        M, P, gp = self.M[:, :m, :m], self.P[:, :m, :m], self.gp[:, :m]
        z = np.matmul(M, gp[:, :, None])[:, :, 0]
        r = gp - np.matmul(P, z[:, :, None])[:, :, 0]
        bad = run & (np.abs(r).max(axis=1, initial=0.0) > _EXACT * self.thresh)
        singular = np.zeros(run.size, dtype=bool)
        for attempt in range(2):  # one step of iterative refinement, then a fresh inverse
            if not bad.any():
                break
            b = np.flatnonzero(bad)
            if attempt:
                singular[b] = self.refactor(b)
                zb = np.matmul(self.M[b, :m, :m], gp[b, :, None])[:, :, 0]
            else:
                zb = z[b] + np.matmul(M[b], r[b, :, None])[:, :, 0]
            z[b] = zb
            rb = gp[b] - np.matmul(P[b], zb[:, :, None])[:, :, 0]
            bad[b] = np.abs(rb).max(axis=1, initial=0.0) > _EXACT * self.thresh[b]
        singular |= run & ~np.isfinite(z).all(axis=1)
        return z, singular


def _active_set_batch(G, g, tol, max_iter, warm) -> NnkResult:
    B, k = g.shape
    theta = np.zeros((B, k))
    iterations = np.full(B, max_iter, dtype=np.int64)
    residual = np.full(B, np.inf)
    objective = np.zeros(B)
    failed = np.zeros(B, dtype=bool)
    gscale = np.abs(g).max(axis=1) if B else np.zeros(0)
    gscale = np.where(gscale > 0, gscale, 1.0)

    cap = min(k, 16)
    if warm is not None and B:
        cap = min(k, max(cap, int(warm.sum(axis=1).max())))
    st = _State(g, tol * gscale, cap)
    if warm is not None and warm.any():
        _warm_state(st, G, warm, cap)

    n_done = 0
    for it in range(max_iter):
        # finished queries stay (mode _DONE, never touched) until a quarter of the
        # batch is done: compacting every time would copy the state every iteration
        if n_done and 4 * n_done >= st.rows.size:
            st.keep(st.mode != _DONE)
            n_done = 0
        n = st.rows.size
        if n == n_done:
            break
        new_slot = np.full(n, -1, dtype=np.int64)

        # --- outer step: certify, or pick the entering variable (largest gradient)
        outer = st.mode == _OUTER
        if outer.any():
            m = int(st.count.max())
            w = st.g - np.einsum("ns,nsk->nk", st.th[:, :m], st.R[:, :m])
            cand = np.where(st.in_set | st.blocked, -np.inf, w)
            j = cand.argmax(axis=1)
            best = np.take_along_axis(cand, j[:, None], 1)[:, 0]
            done = outer & (best <= st.thresh)
            if done.any():
                d = np.flatnonzero(done)
                rd, wd = st.rows[d], w[d]
                viol = np.where(st.in_set[d], np.abs(wd), np.maximum(wd, 0.0))
                residual[rd] = viol.max(axis=1) / gscale[rd]
                iterations[rd] = it
                full = np.zeros((d.size, k))
                bi, si = np.nonzero(st.var[d] >= 0)
                full[bi, st.var[d][bi, si]] = st.th[d][bi, si]
                theta[rd] = full
                # 1/2 theta.G theta - g.theta with G theta = g - w
                objective[rd] = -0.5 * np.einsum("bk,bk->b", full, st.g[d] + wd)
                st.mode[d] = _DONE
                n_done += d.size
            go = outer & ~done
            if go.any():
                new_slot, added = st.add(G, go, j)
                refused = go & ~added
                if refused.any():  # dependent on the active set: never offer it again
                    b = np.flatnonzero(refused)
                    st.blocked[b, j[b]] = True
        if n == n_done:
            break

        # --- solve on the active set of every running query
        m = int(st.count.max())
        run = st.mode != _DONE
        z, singular = st.solve(m, run)
        filled = st.var[:, :m] >= 0
        ar = np.arange(n)

        # an entering variable must come out positive; in floating point it may not
        # (nearly dependent kernel row): take it back out and never offer it again
        bad_new = (new_slot >= 0) & (z[ar, np.maximum(new_slot, 0)] <= 0) & ~singular
        if bad_new.any():
            b = np.flatnonzero(bad_new)
            st.blocked[b, st.var[b, new_slot[b]]] = True
            st.remove(b, new_slot[b])
            st.mode[b] = _OUTER
        positive = np.all(z > 0, axis=1, where=filled)
        live = run & ~bad_new & ~singular
        ok = live & positive
        np.copyto(st.th[:, :m], z, where=ok[:, None])
        warm_neg = live & ~positive & (st.mode == _WARM)
        step = live & ~positive & ~warm_neg
        st.mode[ok] = _OUTER

        if warm_neg.any():  # a warm guess: drop what comes out non-positive, theta stays 0
            b, s = np.nonzero(filled & (z <= 0) & warm_neg[:, None])
            st.remove(b, s)

        if step.any():  # move towards z until the first weight hits zero; drop it
            b = np.flatnonzero(step)
            th, zb, fb = st.th[b, :m], z[b], filled[b]
            neg = fb & (zb <= 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(neg, th / (th - zb), np.inf)
            q = ratio.argmin(axis=1)
            alpha = ratio[np.arange(b.size), q]
            th = th + alpha[:, None] * (zb - th)
            th[np.arange(b.size), q] = 0.0
            th[~fb] = 0.0
            st.th[b, :m] = np.maximum(th, 0.0)
            bi, si = np.nonzero(fb & (th <= 0))
            st.remove(b[bi], si)
            st.mode[b] = _INNER

        bad = singular & run
        if bad.any():
            failed[st.rows[bad]] = True
            st.mode[bad] = _DONE
            n_done += int(bad.sum())

    failed[st.rows[st.mode != _DONE]] = True  # out of iterations
    return NnkResult(theta=theta, iterations=iterations, kkt_residual=residual, fallback=failed,
                     objective=objective, tol=tol)


def _warm_state(st, G, warm, cap):
    """Load the guessed supports into the slots; queries whose guess is singular start cold."""
    order = np.argsort(~warm, axis=1, kind="stable")[:, :cap]
    filled = np.take_along_axis(warm, order, 1)
    st.var = np.where(filled, order, -1)
    st.R = np.where(filled[:, :, None], _rows(G, st.rows[:, None], order), 0.0)
    both = filled[:, :, None] & filled[:, None, :]
    st.P = np.where(both, np.take_along_axis(st.R, order[:, None, :], axis=2), np.eye(cap))
    st.gp = np.where(filled, np.take_along_axis(st.g, order, 1), 0.0)
    st.count = filled.sum(axis=1)
    st.in_set = warm.copy()
    st.mode = np.where(warm.any(axis=1), _WARM, _OUTER).astype(np.int8)
    cold = st.refactor(np.arange(st.rows.size))
    if cold.any():
        st.var[cold] = -1
        st.R[cold] = 0.0
        st.P[cold] = st.M[cold] = np.eye(cap)
        st.gp[cold] = 0.0
        st.count[cold] = 0
        st.in_set[cold] = False
        st.mode[cold] = _OUTER


def _rows(G, rows, j):
    """Kernel rows ``G[rows, j, :]`` as float64 (G is symmetric, and rows are contiguous)."""
    out = np.asarray(G[rows, j, :], dtype=np.float64)
    if not np.isfinite(out).all():
        b = np.broadcast_to(rows, np.shape(j))[~np.isfinite(out).all(axis=-1)]
        raise InputError(f"G holds NaN or infinite values (query {int(b.flat[0])})",
                         hint="check the features for NaN/inf")
    return out


# --------------------------------------------------------------------------- fallback

def _solve_one(Gq, gq, tol, index):
    """Exact path for one query: scipy NNLS on the least-squares form of the QP.

    ``G = V diag(e) V^T`` (eigendecomposition, so singular ``G`` is fine); with
    ``A = diag(sqrt(e)) V^T`` and ``b = diag(1/sqrt(e)) V^T g`` over the numerically
    non-zero eigenvalues, ``1/2 |A theta - b|^2 = 1/2 theta^T G theta - g^T theta +
    const`` (g lies in the range of a kernel Gram matrix). The result is then polished
    on its support and certified against the original ``G`` and ``g``.
    """
    from scipy.optimize import nnls

    Gq = np.asarray(Gq, dtype=np.float64)
    k = gq.size
    Gs = 0.5 * (Gq + Gq.T)
    e, V = np.linalg.eigh(Gs)
    emax = max(float(e[-1]), 0.0)
    if e[0] < -1e-6 * max(emax, 1e-300) * k:
        raise InputError(f"G is not positive semidefinite (query {index}: eigenvalue {e[0]:.3g})",
                         hint="NNK needs a positive semidefinite kernel matrix")
    keep = e > emax * k * np.finfo(float).eps
    candidates = []
    if keep.any():
        se = np.sqrt(e[keep])
        A = se[:, None] * V[:, keep].T
        b = (V[:, keep].T @ gq) / se
        theta, _ = nnls(A, b, maxiter=50 * k + 100)
        candidates.append(theta)
        support = theta > 0
        if support.any():  # polish: exact stationarity on the support found
            sub = np.linalg.lstsq(Gs[np.ix_(support, support)], gq[support], rcond=None)[0]
            if (sub > 0).all():
                polished = np.zeros(k)
                polished[support] = sub
                candidates.append(polished)
    else:
        candidates.append(np.zeros(k))
    best = min((_certify(Gq, gq, t) + (t,) for t in candidates), key=lambda c: c[0])
    return best[2], best[0], best[1]


def _certify(Gq, gq, theta):
    """(relative KKT residual, objective) of one query's ``theta``."""
    lam = Gq @ theta - gq
    scale = np.abs(gq).max()
    scale = scale if scale > 0 else 1.0
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    return float(viol.max() / scale), float(0.5 * theta @ (lam + gq) - gq @ theta)
