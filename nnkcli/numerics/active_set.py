"""The batched Lawson–Hanson active-set engine behind ``nnkcli.numerics.solver.nnk_solve``.

Solves ``min_{theta >= 0} 1/2 theta^T G theta - g^T theta`` for many queries at once.
Each query runs the classic primal active-set method (Lawson & Hanson, 1974, in its
quadratic-programme form): add the variable with the largest gradient
``w = g - G theta``; if the unconstrained optimum ``z`` on the active set has a
non-positive entry, step back from ``theta`` towards ``z`` until a weight hits zero
and drop it. Every step is a handful of numpy operations over all queries running.

What makes it cheap:

- only the rows of ``G`` of variables that entered are read (``k * t`` numbers for a
  query after ``t`` entries, not ``k**2``), and float32 rows are widened as read;
- the inverse ``M`` of the active-set matrix is updated in O(t**2) per entry
  (bordering) and per exit (Schur complement), and so is the active-set optimum ``z``
  (O(t)); there is no factorisation in the loop. Rounding drift cannot go unnoticed:
  the gradient ``w``, recomputed from ``G`` at every outer step, must vanish on the
  active set, and where it does not ``M`` is recomputed from scratch;
- queries are solved in cohorts of a few hundred, which keeps the arrays in cache; a
  new cohort starts when the older ones are half finished, so slow queries never
  hold the others up and memory does not grow with the batch.

A query this engine cannot finish (iteration limit, a numerically singular active
set), or that it finishes with a variable it had to refuse although that variable's
gradient says it should enter (an ill-conditioned query), comes back flagged
``failed``; the caller re-solves it another way.
"""

from __future__ import annotations

import numpy as np

from nnkcli.errors import InputError

_OUTER, _INNER, _WARM, _DONE = 0, 1, 2, 3
#: Schur complement / diagonal below which an entering row counts as dependent
_DEPENDENT = 1e-12
#: a variable enters when its gradient exceeds _ENTER * tol * max|g|: well inside the
#: certificate (so the objective is accurate on ill-conditioned problems too) and far
#: above rounding noise
_ENTER = 1e-2
#: the active-set optimum must satisfy |G_PP z - g_P| <= _EXACT * tol * max|g|
_EXACT = 1e-2
#: a cohort's arrays take about this many bytes
_COHORT_BYTES = 16 * 2**20


class Outcome:
    """Per-query results of ``solve_batch`` (arrays over the batch)."""

    def __init__(self, B, k, max_iter):
        self.theta = np.zeros((B, k))
        self.iterations = np.full(B, max_iter, dtype=np.int64)
        self.residual = np.full(B, np.inf)
        self.objective = np.zeros(B)
        self.failed = np.zeros(B, dtype=bool)


def max_steps(max_iter, k: int) -> int:
    """The iteration limit per query: ``max_iter``, or ``3 * k + 20`` when None (InputError below 1)."""
    if max_iter is None:
        return 3 * k + 20
    if int(max_iter) < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
    return int(max_iter)


def g_scale(g) -> np.ndarray:
    """(B,) float64 ``max_j |g_j|`` per query (1 where g = 0): the scale of every tolerance."""
    scale = np.abs(g).max(axis=1, initial=0.0)
    return np.where(scale > 0, scale, 1.0)


def solve_batch(G, g, tol, max_iter, warm=None) -> Outcome:
    """Run the engine on ``G`` (B, k, k) and ``g`` (B, k); see the module docstring.

    ``G`` may be float32 or float64 (rows are widened as read) and any view;
    ``g`` is float64; ``warm`` (B, k) bool or None holds initial active-set guesses.
    """
    B, k = g.shape
    out = Outcome(B, k, max_iter)
    gscale = g_scale(g)
    size = int(np.clip(_COHORT_BYTES // (8 * (24 * k + 2 * 24 * 24)), 64, 2048))
    cohorts: list[_Cohort] = []
    queued = 0
    while True:
        if queued < B and 2 * sum(c.running for c in cohorts) < size:
            rows = np.arange(queued, min(B, queued + size))
            queued += rows.size
            cohorts.append(
                _Cohort(G, rows, g[rows], tol * gscale[rows], gscale[rows], None if warm is None else warm[rows])
            )
        if not cohorts:
            break
        for c in cohorts:
            c.step(G, out, max_iter)
        cohorts = [c for c in cohorts if c.running]
    return out


class _Cohort:
    """Queries started together, as arrays over their rows.

    Variables enter in "slots", one new slot per iteration for the whole cohort (slot
    ``t`` is filled at iteration ``t`` by every row that adds a variable then and stays
    empty in the others), so that entering is a slice assignment, not a scatter.
    Slot ``s`` of row ``b`` holds variable ``var[b, s]`` (``-1`` = empty), its kernel
    row ``R[b, s]`` (float64, (k,)), its weight ``th[b, s]`` and its value ``z[b, s]``
    in the unconstrained optimum on the active set. ``M[b]`` is the inverse of the
    active-set matrix ``G[var, var]``, with identity rows and columns for empty slots
    so that it never needs masking; ``gp[b]`` is ``g[var]`` (0 when empty). Every slot
    at or past ``t`` is empty in every row. Finished rows (mode ``_DONE``) are dropped
    once a third of the rows are finished.
    """

    def __init__(self, G, rows, g, scale, gscale, warm):
        n, k = g.shape
        n_warm = int(warm.sum(axis=1).max(initial=0)) if warm is not None else 0
        self.age = 0
        self.t = 0
        self.rows = rows
        self.g = g
        self.gscale = gscale
        self.enter = _ENTER * scale  # a gradient above this enters the active set
        self.exact = _EXACT * scale  # tolerated |G_PP z - g_P|
        self.in_set = np.zeros((n, k), dtype=bool)
        self.blocked = np.zeros((n, k), dtype=bool)
        self.mode = np.full(n, _OUTER, dtype=np.int8)
        self._alloc(n, k, max(16, 2 * n_warm))
        if n_warm:
            self._load(G, warm, n_warm)

    @property
    def running(self) -> int:
        return int(np.count_nonzero(self.mode != _DONE))

    def _alloc(self, n, k, cap):
        self.R = np.zeros((n, cap, k))
        self.M = np.broadcast_to(np.eye(cap), (n, cap, cap)).copy()
        self.gp = np.zeros((n, cap))
        self.var = np.full((n, cap), -1, dtype=np.int64)
        self.th = np.zeros((n, cap))
        self.z = np.zeros((n, cap))

    def _load(self, G, warm, n_warm):
        """Put the guessed supports into the first slots; a singular guess starts cold."""
        order = np.argsort(~warm, axis=1, kind="stable")[:, :n_warm]
        filled = np.take_along_axis(warm, order, 1)
        self.var[:, :n_warm] = np.where(filled, order, -1)
        self.R[:, :n_warm] = np.where(filled[:, :, None], _rows(G, self.rows[:, None], order), 0.0)
        self.gp[:, :n_warm] = np.where(filled, np.take_along_axis(self.g, order, 1), 0.0)
        self.in_set = warm.copy()
        self.t = n_warm
        cold = self.refactor(np.arange(self.rows.size))
        if cold.any():
            self.var[cold] = -1
            self.R[cold] = 0.0
            self.M[cold] = np.eye(self.M.shape[1])
            self.gp[cold] = self.z[cold] = 0.0
            self.in_set[cold] = False
        self.mode[:] = np.where(self.in_set.any(axis=1), _WARM, _OUTER)

    # ------------------------------------------------------------------ slot bookkeeping

    def _keep(self, mask):
        """Drop the rows not in ``mask``, in place (the arrays become prefix views)."""
        m = int(np.count_nonzero(mask))
        for name in ("R", "M", "gp", "var", "th", "z"):
            a = getattr(self, name)
            a[:m] = a[mask]
            setattr(self, name, a[:m])
        for name in ("rows", "g", "gscale", "enter", "exact", "in_set", "blocked", "mode"):
            setattr(self, name, getattr(self, name)[mask])

    def _make_room(self):
        """Free slot ``t``: squeeze the empty slots out if that frees enough, else grow."""
        n, cap, k = self.R.shape
        filled = self.var >= 0
        used = int(filled.sum(axis=1).max(initial=0))
        if used > cap * 3 // 4:
            old = {name: getattr(self, name) for name in ("R", "M", "gp", "var", "th", "z")}
            self._alloc(n, k, 2 * cap)
            for name, part in old.items():
                if name == "M":
                    self.M[:, :cap, :cap] = part
                else:
                    getattr(self, name)[:, :cap] = part
            return
        order = np.argsort(~filled, axis=1, kind="stable")[:, :used]
        b = np.arange(n)[:, None]
        part = self.M[b[:, :, None], order[:, :, None], order[:, None, :]]
        self.M[:] = np.eye(cap)
        self.M[:, :used, :used] = part
        for name, empty in (("var", -1), ("th", 0.0), ("z", 0.0), ("gp", 0.0), ("R", 0.0)):
            part = getattr(self, name)[b, order]
            getattr(self, name)[:, used:] = empty
            getattr(self, name)[:, :used] = part
        self.t = used

    def refactor(self, b):
        """Recompute ``M`` and ``z`` of rows ``b`` from ``G``; returns where that failed."""
        t = self.t
        var = self.var[b, :t]
        filled = var >= 0
        P = np.take_along_axis(self.R[b, :t], np.maximum(var, 0)[:, None, :], axis=2)
        P = np.where(filled[:, :, None] & filled[:, None, :], P, np.eye(t))
        failed = np.zeros(b.size, dtype=bool)
        try:
            M = np.linalg.inv(P)
        except np.linalg.LinAlgError:  # rare: find the singular ones
            M = np.empty_like(P)
            for i in range(b.size):
                try:
                    M[i] = np.linalg.inv(P[i])
                except np.linalg.LinAlgError:
                    M[i] = np.eye(t)
                    failed[i] = True
        gp = self.gp[b, :t]
        z = np.einsum("nij,nj->ni", M, gp)
        z += np.einsum("nij,nj->ni", M, gp - np.einsum("nij,nj->ni", P, z))  # one refinement
        r = gp - np.einsum("nij,nj->ni", P, z)
        failed |= ~(np.abs(r).max(axis=1, initial=0.0) <= self.exact[b])
        self.M[b, :t, :t] = M
        self.z[b, :t] = z
        return failed

    def add(self, G, go, j):
        """Put variable ``j[b]`` into slot ``t`` of every row ``b`` with ``go[b]``; t += 1.

        Returns ``ok`` (n,) bool, where a variable was added: not where ``j`` is
        numerically dependent on the active set (Schur complement ~ 0), nor where its
        new value would not come out positive (which exact arithmetic rules out).
        """
        if self.t == self.var.shape[1]:
            self._make_room()
        t = self.t
        n = go.size
        ar = np.arange(n)
        b = np.flatnonzero(go)
        if b.size == n:
            self.R[:, t] = _rows(G, self.rows, j)
        else:
            self.R[b, t] = _rows(G, self.rows[b], j[b])
        Rt = self.R[:, t]
        var = self.var[:, :t]
        a = np.take_along_axis(Rt, np.maximum(var, 0), 1)
        a[(var < 0) | ~go[:, None]] = 0.0
        c = np.where(go, Rt[ar, j], 1.0)
        gj = np.where(go, self.g[ar, j], 0.0)
        M = self.M[:, : t + 1, : t + 1]
        u = np.einsum("nij,nj->ni", M[:, :t, :t], a)
        sigma = c - np.einsum("ni,ni->n", a, u)
        ok = go & (sigma > _DEPENDENT * np.abs(c))
        sigma = np.where(ok, sigma, 1.0)
        # value of the new variable in the new optimum: (g_j - a.z) / sigma
        delta = (gj - np.einsum("ni,ni->n", a, self.z[:, :t])) / sigma
        ok &= delta > 0
        u[~ok] = 0.0
        delta[~ok] = 0.0
        self.R[~ok, t] = 0.0
        # bordered inverse: M - e_t e_t^T + v v^T / sigma with v = (u, -1); z likewise
        v = np.empty((n, t + 1))
        v[:, :t] = u
        v[:, t] = np.where(ok, -1.0, 0.0)
        M[:, t, t] = np.where(ok, 0.0, 1.0)
        M += np.einsum("ni,nj->nij", v, v / sigma[:, None])
        self.z[:, :t] -= u * delta[:, None]
        self.z[:, t] = delta
        self.gp[:, t] = np.where(ok, gj, 0.0)
        self.var[:, t] = np.where(ok, j, -1)
        self.in_set[ar[ok], j[ok]] = True
        self.t = t + 1
        return ok

    def remove(self, b, s):
        """Empty slots ``s`` of rows ``b`` (index arrays of equal length)."""
        t = self.t
        while b.size:
            # one slot per row at a time: the downdates of one row chain (b is sorted)
            first = np.flatnonzero(np.diff(b, prepend=-1))
            bb, ss = b[first], s[first]
            ar = np.arange(bb.size)
            Mb = self.M[bb, :t, :t]
            col = Mb[ar, :, ss]
            pivot = col[ar, ss]
            zb = self.z[bb, :t]
            zb -= col * (zb[ar, ss] / pivot)[:, None]
            zb[ar, ss] = 0.0
            Mb -= col[:, :, None] * (col / pivot[:, None])[:, None, :]
            Mb[ar, ss, :] = 0.0
            Mb[ar, :, ss] = 0.0
            Mb[ar, ss, ss] = 1.0
            self.M[bb, :t, :t] = Mb
            self.z[bb, :t] = zb
            self.in_set[bb, self.var[bb, ss]] = False
            self.var[bb, ss] = -1
            self.th[bb, ss] = 0.0
            self.gp[bb, ss] = 0.0
            if first.size == b.size:
                break
            rest = np.ones(b.size, dtype=bool)
            rest[first] = False
            b, s = b[rest], s[rest]

    # ------------------------------------------------------------------ one iteration

    def step(self, G, out, max_iter):
        """One Lawson–Hanson iteration of every running row; results go to ``out``."""
        if 3 * (self.mode.size - self.running) >= self.mode.size:
            self._keep(self.mode != _DONE)
        if self.age >= max_iter:
            out.failed[self.rows[self.mode != _DONE]] = True
            self.mode[:] = _DONE
            return
        self.age += 1
        t = self.t
        n = self.mode.size

        # --- outer step: certify, or pick the entering variable (largest gradient)
        outer = self.mode == _OUTER
        added = np.zeros(n, dtype=bool)
        if outer.any():
            w = self.g - np.einsum("ns,nsk->nk", self.th[:, :t], self.R[:, :t])
            var = self.var[:, :t]
            filled = var >= 0
            # on the active set w must vanish (theta = z there): if not, M has drifted
            stationarity = np.where(filled, np.abs(np.take_along_axis(w, np.maximum(var, 0), 1)), 0.0)
            drift = outer & (stationarity.max(axis=1, initial=0.0) > self.exact)
            if drift.any():
                b = np.flatnonzero(drift)
                self._fail(out, b[self.refactor(b)])
                self.mode[b[self.mode[b] != _DONE]] = _INNER
                outer &= ~drift
            cand = np.where(self.in_set | self.blocked, -np.inf, w)
            j = cand.argmax(axis=1)
            best = np.take_along_axis(cand, j[:, None], 1)[:, 0]
            done = outer & (best <= self.enter)
            if done.any():
                self._finish(np.flatnonzero(done), w[done], out)
            go = outer & ~done
            if go.any():
                added = self.add(G, go, j)
                refused = go & ~added
                if refused.any():  # never offer it again: it cannot enter
                    b = np.flatnonzero(refused)
                    self.blocked[b, j[b]] = True
        t = self.t

        # --- inner step: accept z, or step back towards it and drop a variable
        run = self.mode != _DONE
        z = self.z[:, :t]
        filled = self.var[:, :t] >= 0
        positive = np.all(z > 0, axis=1, where=filled)
        ok = run & positive
        np.copyto(self.th[:, :t], z, where=ok[:, None])
        warm = run & ~positive & (self.mode == _WARM)
        back = run & ~positive & ~warm
        self.mode[ok] = _OUTER
        if warm.any():  # a guessed support: drop whatever is not positive; theta stays 0
            b, s = np.nonzero(filled & (z <= 0) & warm[:, None])
            self.remove(b, s)
        if back.any():
            b = np.flatnonzero(back)
            th, zb, fb = self.th[b, :t], z[b], filled[b]
            den = th - zb  # > 0 where z <= 0 < theta; 0 only where theta = z = 0
            ratio = np.where(fb & (zb <= 0), th / np.where(den > 0, den, 1.0), np.inf)
            q = ratio.argmin(axis=1)
            alpha = ratio[np.arange(b.size), q]
            th = th + alpha[:, None] * (zb - th)
            th[np.arange(b.size), q] = 0.0
            th[~fb] = 0.0
            self.th[b, :t] = np.maximum(th, 0.0)
            bi, si = np.nonzero(fb & (th <= 0))
            self.remove(b[bi], si)
            self.mode[b] = _INNER

    def _finish(self, d, w, out):
        """Record the certified rows ``d`` (their gradients ``w``) and retire them."""
        t, k = self.t, self.g.shape[1]
        rows = self.rows[d]
        in_set = self.in_set[d]
        viol = np.where(in_set, np.abs(w), np.maximum(w, 0.0))
        out.residual[rows] = viol.max(axis=1) / self.gscale[d]
        # a variable that should enter but could not (numerically dependent on the
        # active set): the query is ill-conditioned, let the caller try harder
        out.failed[rows] = (self.blocked[d] & (w > self.enter[d, None])).any(axis=1)
        out.iterations[rows] = self.age - 1
        theta = np.zeros((d.size, k))
        bi, si = np.nonzero(self.var[d, :t] >= 0)
        theta[bi, self.var[d][bi, si]] = self.th[d][bi, si]
        out.theta[rows] = theta
        # 1/2 theta.G theta - g.theta, with G theta = g - w
        out.objective[rows] = -0.5 * np.einsum("bk,bk->b", theta, self.g[d] + w)
        self.mode[d] = _DONE

    def _fail(self, out, b):
        out.failed[self.rows[b]] = True
        self.mode[b] = _DONE


def _rows(G, rows, j):
    """Kernel rows ``G[rows, j, :]`` as float64 (G is symmetric; rows are contiguous)."""
    out = np.asarray(G[rows, j, :], dtype=np.float64)
    if not np.isfinite(out).all():
        b = np.broadcast_to(rows, np.shape(j))[~np.isfinite(out).all(axis=-1)]
        raise InputError(
            f"G holds NaN or infinite values (query {int(b.flat[0])})", hint="check the features for NaN/inf"
        )
    return out
