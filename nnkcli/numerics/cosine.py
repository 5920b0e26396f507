"""The NNK problem of the cosine kernel, solved from its structure (pure numpy).

For neighbors ``x_1 .. x_k`` (the rows of ``X``, unit length) the cosine kernel is
``G = 1/2 (1 1^T + X X^T)``, so

    G theta = 1/2 (sum(theta) 1 + X (X^T theta))

costs ``O(k d)`` per query in float64, and the KKT certificate never needs ``G``.
``nnk_solve_cosine`` uses that in three steps:

1. **candidates in float32**: the active-set engine (``nnkcli.numerics.active_set``)
   runs on float32 kernel blocks, one float32 matrix product per query (measured about
   twice the speed of the float64 rank-k update ``kernel_blocks`` runs, and half its
   memory);
2. **polish in float64**: on each candidate support ``P`` the weights are solved again,
   ``G_PP theta_P = g_P`` with ``G_PP`` built in float64 from the ``|P|`` support rows
   (``|P|^2 d`` per query, ``|P|`` is ~10-25 where k is 200), plus one step of
   iterative refinement;
3. **certificate in float64**: ``lambda = G theta - g`` from the structured product
   above, checked exactly as ``nnk_solve`` checks it (``theta > 0`` on ``P``,
   ``lambda >= -tol max|g|`` off it, ``|lambda| <= tol max|g|`` on it).

Across k (a sweep), a new neighbor can enter only if its gradient ``g_j - (G theta)_j``
at the previous k's optimum is positive, an ``O(d)`` check per neighbor; where one is,
the previous support plus the entering neighbors is tried first (polish + certificate),
and only where that guess fails does the engine run, warm-started from it.

Float32 only proposes: a query whose polished weights fail the float64 certificate (a
variable at the edge of the support, where float32 rounding moved the decision) is
re-solved by ``nnk_solve`` on float64 kernel blocks, warm-started from the candidate,
with ``nnk_solve``'s own fallback behind it. Every returned ``theta`` therefore carries
the same float64 certificate as ``nnk_solve``'s, at the same tolerance.

Every per-query number is computed by operations whose shapes depend only on that
query's k and support size (queries are grouped by support size), never on the batch
it came in, so results are bit-identical whatever the chunking or the thread count.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from nnkcli.errors import InputError
from nnkcli.numerics import compiled
from nnkcli.numerics.active_set import _DEPENDENT, _ENTER, _EXACT, g_scale, max_steps
from nnkcli.numerics.kernels import kernel_blocks

__all__ = ["cosine_gram32", "cosine_products", "nnk_solve_cosine"]

#: rounds of "solve on the guessed support, drop non-positive weights" before the engine runs (sweeps)
GUESSES = 3


def cosine_gram32(X) -> np.ndarray:
    """Float32 kernel blocks ``1/2 (1 + X X^T)``, shape (B, k, k), of neighbors ``X`` (B, k, d).

    One float32 matrix product per query (numpy's stacked matmul). Measured here, the
    whole block this way costs about a third of computing only the ~25 rows the
    engine reads with matrix-vector products: those are bound by memory, this by
    arithmetic. The candidates it yields are only proposals (module docstring).
    """
    X = np.asarray(X, dtype=np.float32)
    G = np.matmul(X, X.transpose(0, 2, 1))
    G += np.float32(1.0)
    G *= np.float32(0.5)
    return G


def cosine_products(X, theta) -> np.ndarray:
    """``G theta`` (B, k) float64 for the cosine kernel of neighbors ``X`` (B, k, d), without ``G``.

    ``1/2 (sum(theta) + X (X^T theta))`` with float64 accumulation; float32 ``X`` is
    not copied to float64 (the products are widened as they are summed).
    """
    theta = np.asarray(theta, dtype=np.float64)
    v = np.einsum("bkd,bk->bd", X, theta, dtype=np.float64)
    return 0.5 * (theta.sum(axis=1)[:, None] + np.einsum("bkd,bd->bk", X, v, dtype=np.float64))


def nnk_solve_cosine(X, g, k_values, *, tol: float = 1e-8, max_iter: int | None = None) -> list:
    """NNK weights of the cosine kernel over the leading k neighbors, for every k in ``k_values``.

    The same problems as ``nnk_solve_path(*kernel_blocks(q, X), k_values)`` (with
    ``g = (1 + <q, x_j>) / 2``), solved as the module docstring describes; each result
    carries the float64 certificate of ``nnk_solve``.

    Parameters
    ----------
    X : array_like of shape (B, K, d), float32 or float64
        Each query's neighbors, unit rows, nearest first. A row of zeros is a
        neighbor that is not there (with ``g_j = 0`` it never gets weight).
    g : array_like of shape (B, K)
        Query-to-neighbor kernel values ``(1 + <q, x_j>) / 2``.
    k_values : sequence of int
        Increasing neighbor counts within 1..K.
    tol, max_iter
        As for ``nnk_solve``.

    Returns
    -------
    list of NnkResult
        One per k, ``theta`` of the i-th of shape (B, k_i), float64.
    """
    from nnkcli.numerics.solver import nnk_solve

    X = np.asarray(X)
    g = np.asarray(g, dtype=np.float64)
    if X.ndim != 3 or g.shape != X.shape[:2]:
        raise InputError(f"X must be (B, K, d) and g (B, K); got shapes {X.shape} and {g.shape}")
    ks = [int(k) for k in k_values]
    if not ks or any(b <= a for a, b in pairwise(ks)) or ks[0] < 1 or ks[-1] > g.shape[1]:
        raise InputError(f"k_values must increase within 1..{g.shape[1]}, got {ks}")
    tol = float(tol)
    max_steps(max_iter, ks[-1])  # the numpy engine's own check, before either engine runs
    B = g.shape[0]
    if B == 0:
        return [nnk_solve(np.zeros((0, k, k)), np.zeros((0, k)), tol=tol, max_iter=max_iter) for k in ks]
    if compiled.available():
        return _solve_compiled(X, g, ks, tol, max_iter)
    return _solve_numpy(X, g, ks, tol, max_iter)


def _solve_compiled(X, g, ks, tol, max_iter) -> list:
    """The compiled per-query kernel; the queries it flags at any k are solved by the numpy path."""
    from nnkcli.numerics.solver import NnkResult

    K = ks[-1]
    steps = max_steps(max_iter, K)
    out = compiled.solve_cosine_path(X[:, :K], g[:, :K], ks, tol, _ENTER, _EXACT, _DEPENDENT, steps)
    if out is None:  # the kernel could not run here (warned once): the numpy engine
        return _solve_numpy(X, g, ks, tol, max_iter)
    thetas, resid, iters, obj, failed = out
    results = [
        NnkResult(
            theta=thetas[i],
            iterations=iters[i],
            kkt_residual=resid[i],
            fallback=np.zeros(g.shape[0], dtype=bool),
            objective=obj[i],
            tol=tol,
        )
        for i in range(len(ks))
    ]
    redo = np.flatnonzero(failed.any(axis=0) | ~(resid <= tol).all(axis=0))
    if redo.size:
        for res, sub in zip(results, _solve_numpy(X[redo], g[redo], ks, tol, max_iter), strict=True):
            res.theta[redo], res.kkt_residual[redo] = sub.theta, sub.kkt_residual
            res.objective[redo], res.fallback[redo] = sub.objective, sub.fallback
            res.iterations[redo] = sub.iterations
    return results


def _solve_numpy(X, g, ks, tol, max_iter) -> list:
    """The batched numpy path (module docstring)."""
    from nnkcli.numerics.solver import NnkResult, nnk_solve

    B = g.shape[0]
    G32 = cosine_gram32(X[:, : ks[-1]])
    results = []
    prev = None
    v = np.zeros((B, X.shape[2]))  # X^T theta of the previous k's certified weights
    for k in ks:
        gk = g[:, :k]
        gscale = g_scale(gk)
        res = NnkResult(
            theta=np.zeros((B, k)),
            iterations=np.zeros(B, dtype=np.int64),
            kkt_residual=np.full(B, np.inf),
            fallback=np.zeros(B, dtype=bool),
            objective=np.zeros(B),
            tol=tol,
        )
        if prev is None:
            todo = np.arange(B)
            warm = None
        else:
            kp = prev.theta.shape[1]
            # gradient of the new neighbors at the previous optimum, in float64: O((k - kp) d)
            w_new = gk[:, kp:] - 0.5 * (prev.theta.sum(axis=1)[:, None] + _products(X, kp, k, np.arange(B), v))
            # the entry rule of the active-set engine, so the weights are what a cold solve finds
            stays = (w_new <= _ENTER * tol * gscale[:, None]).all(axis=1) & (prev.kkt_residual <= tol)
            s = np.flatnonzero(stays)
            res.theta[s, :kp] = prev.theta[s]
            res.kkt_residual[s] = np.maximum(
                prev.kkt_residual[s], np.maximum(w_new[s], 0.0).max(axis=1, initial=0.0) / gscale[s]
            )
            res.objective[s] = prev.objective[s]
            todo = np.flatnonzero(~stays)
            warm = np.zeros((todo.size, k), dtype=bool)
            warm[:, :kp] = prev.theta[todo] > 0
            warm[:, kp:] = w_new[todo] > _ENTER * tol * gscale[todo, None]
            if todo.size:
                # usually the new support is the old one plus the neighbors that want to enter:
                # check that guess directly in float64; the engine only runs where it is wrong
                for _ in range(GUESSES):
                    theta, resid, obj, vt, kept = polish(X, k, todo, gk[todo], warm, tol, kept=True)
                    right = resid <= tol
                    hit = todo[right]
                    res.theta[hit], res.kkt_residual[hit], res.objective[hit] = theta[right], resid[right], obj[right]
                    v[hit] = vt[right]
                    # a guess with a non-positive weight: drop those neighbors and try again
                    pruned = ~right & (kept != warm).any(axis=1)
                    todo, warm = todo[~right], np.where(pruned[:, None], kept, warm)[~right]
                    if not pruned.any():
                        break
        if todo.size:
            if warm is None:  # a leading-block view: the engine reads only the rows it needs
                cand = nnk_solve(G32[:, :k, :k], gk, tol=tol, max_iter=max_iter)
            else:
                cand = nnk_solve(G32[todo, :k, :k], gk[todo], tol=tol, max_iter=max_iter, warm_start=warm)
            theta, resid, obj, vt = polish(X, k, todo, gk[todo], cand.theta > 0, tol)
            res.theta[todo], res.kkt_residual[todo], res.objective[todo] = theta, resid, obj
            res.iterations[todo] = cand.iterations
            v[todo] = vt
            wrong = ~(resid <= tol)
            bad = todo[wrong]
            if bad.size:  # float32 proposed the wrong support: solve these exactly in float64
                Gb, _ = kernel_blocks(np.zeros((bad.size, X.shape[2])), X[bad, :k], sims=np.zeros((bad.size, k)))
                exact = nnk_solve(Gb, gk[bad], tol=tol, max_iter=max_iter, warm_start=cand.theta[wrong] > 0)
                res.theta[bad], res.kkt_residual[bad] = exact.theta, exact.kkt_residual
                res.objective[bad], res.fallback[bad] = exact.objective, exact.fallback
                res.iterations[bad] += exact.iterations
                for i, b in enumerate(bad.tolist()):
                    v[b] = np.dot(exact.theta[i], X[b, :k])
        results.append(res)
        prev = res
    return results


def _products(X, lo, hi, rows, v) -> np.ndarray:
    """``X[rows[i], lo:hi] @ v[i]`` (len(rows), hi - lo) float64 for every i, one query at a time.

    One product per query (float32 rows widened in cache, no copy of the batch), so each
    query's numbers do not depend on which other queries are computed with it.
    """
    out = np.empty((len(rows), hi - lo))
    for i, b in enumerate(np.asarray(rows).tolist()):
        np.dot(X[b, lo:hi], v[i], out=out[i])
    return out


def polish(X, k, rows, g, support, tol, kept=False):
    """Float64 weights on given supports and their float64 certificate.

    Parameters
    ----------
    X : ndarray (N, K, d), neighbors; ``k``: leading neighbors used; ``rows`` (B,)
    int: the queries of ``X`` solved; g : ndarray (B, k) float64; support : ndarray
    (B, k) bool.

    Returns
    -------
    theta (B, k), kkt_residual (B,), objective (B,), v = X^T theta (B, d), all float64;
    with ``kept=True`` also (B, k) bool: the support's entries whose solved weight is positive.
    ``kkt_residual`` is ``inf`` where the support's solution is not positive or misses
    the engine's own stopping rule (``_ENTER * tol``, tighter than the certificate).
    """
    rows = np.asarray(rows)
    B, d = rows.size, X.shape[2]
    theta = np.zeros((B, k))
    v = np.zeros((B, d))
    positive = np.ones(B, dtype=bool)
    keep = support.copy()
    size = support.sum(axis=1)
    for t in np.unique(size):
        if t == 0:
            continue
        b = np.flatnonzero(size == t)
        idx = np.argsort(~support[b], axis=1, kind="stable")[:, :t]  # support indices, ascending
        XP = np.asarray(X[rows[b][:, None], idx], dtype=np.float64)  # (n, t, d)
        GP = np.matmul(XP, XP.transpose(0, 2, 1))
        GP += 1.0
        GP *= 0.5
        gP = np.take_along_axis(g[b], idx, 1)
        try:
            z = np.linalg.solve(GP, gP[:, :, None])
            z += np.linalg.solve(GP, gP[:, :, None] - np.matmul(GP, z))  # one refinement step
            z = z[:, :, 0]
        except np.linalg.LinAlgError:  # a singular support: per query, so the others still count
            z = np.full((b.size, int(t)), -1.0)
            for i in range(b.size):
                try:
                    zi = np.linalg.solve(GP[i], gP[i])
                    z[i] = zi + np.linalg.solve(GP[i], gP[i] - GP[i] @ zi)
                except np.linalg.LinAlgError:
                    pass
        ok = np.all(z > 0, axis=1) & np.isfinite(z).all(axis=1)
        positive[b] = ok
        if kept:
            part = keep[b]
            np.put_along_axis(part, idx, np.isfinite(z) & (z > 0), 1)
            keep[b] = part
        z = np.where(ok[:, None], z, 0.0)
        part = theta[b]
        np.put_along_axis(part, idx, z, 1)
        theta[b] = part
        v[b] = np.matmul(z[:, None, :], XP)[:, 0]
    # X v only where the support's weights came out positive (elsewhere theta = 0, so G theta = 0):
    # a failed guess costs |P|^2 d, not k d
    prod = np.zeros((B, k))
    pos = np.flatnonzero(positive)
    if pos.size:
        prod[pos] = _products(X, 0, k, rows[pos], v[pos])
    lam = 0.5 * (theta.sum(axis=1)[:, None] + prod) - g
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    resid = viol.max(axis=1, initial=0.0) / g_scale(g)
    # accepted only as tight as the active-set engine stops: the certificate alone (tol)
    # would let a variable with a small positive gradient stay out, and the objective of
    # an ill-conditioned query would then be off by more than the engine's
    resid[~(positive & (resid <= _ENTER * tol))] = np.inf
    objective = 0.5 * np.einsum("bk,bk->b", theta, lam) - 0.5 * np.einsum("bk,bk->b", theta, g)
    if kept:
        return theta, resid, objective, v, keep
    return theta, resid, objective, v
