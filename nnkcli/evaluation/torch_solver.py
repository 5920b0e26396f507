"""The cosine-kernel NNK solve on a torch device (``--backend torch``): a port of the CPU engine.

The problem and the three steps are those of ``nnkcli.numerics.cosine.nnk_solve_cosine``
(read its docstring first); here every step runs on the searcher's device:

1. **candidates in float32 kernel blocks**: ``G = 1/2 (1 + X X^T)`` (B, K, K) is one
   float32 batched matrix product on the device; a batched primal active-set
   (Lawson–Hanson) solver finds each query's candidate support from it. Unlike the
   CPU engine's bordered inverse, every iteration solves the active-set system afresh
   by a batched Cholesky factorisation of the (B, T, T) support block (float64 from the
   float32 rows, identity in the empty slots): fixed shapes, no drift to watch, and a
   GPU does many small factorisations at once. An entering variable goes into the
   slot after the support, so the factor's last pivot is its Schur complement: a
   numerically dependent neighbor (a duplicate) is refused as the CPU engine refuses
   it (``_DEPENDENT``), and so is one whose new weight would not come out positive.
   The loop runs ``CHECK_EVERY`` iterations between looks at the host (the only
   device-to-host syncs), then drops the finished queries.
2. **polish in float64** on each candidate support, grouped by support size (so a
   query's numbers do not depend on the batch it came in), one refinement step;
3. **certificate in float64** through ``G theta = 1/2 (sum theta + X (X^T theta))``,
   checked exactly as ``polish`` in ``nnkcli.numerics.cosine`` checks it: positive
   weights on the support, and the residual within the engine's stopping rule
   (``_ENTER * tol``, tighter than the certificate ``kkt_residual <= tol``).

A query whose weights fail the certificate is re-solved on the CPU by
``nnk_solve_cosine`` (those rows only, over the same leading k values, so they get
exactly the CPU path's weights) and flagged in ``NnkResult.fallback``; every returned
``theta`` therefore carries the CPU path's certificate at the same tolerance.

Across k (a sweep) a query keeps the previous k's weights when no new neighbor's
float64 gradient passes the entry rule (as on the CPU); the others are solved again,
warm-started from the previous support plus the entering neighbors.
"""

from __future__ import annotations

import itertools

import numpy as np

from nnkcli.errors import InputError
from nnkcli.numerics.active_set import _DEPENDENT, _ENTER

__all__ = ["nnk_solve_cosine_torch", "cosine_gram32"]

#: engine iterations between two looks at the host (which queries are done, the largest support)
CHECK_EVERY = 8
#: bytes of the float64 copy of neighbor rows widened at a time for a product (a few queries' (k, d) rows)
PRODUCT_BYTES = 64 * 2**20

_OUTER, _INNER, _WARM, _DONE = 0, 1, 2, 3


def cosine_gram32(X):
    """Float32 kernel blocks ``1/2 (1 + X X^T)`` (B, K, K) of neighbors ``X`` (B, K, d), on X's device."""
    G = X.float() @ X.float().transpose(1, 2)
    G += 1.0
    G *= 0.5
    return G


def g_scale(g):
    """(B,) ``max_j |g_j|`` per query (1 where g = 0), as ``nnkcli.numerics.active_set.g_scale``."""
    torch = _torch()
    scale = g.abs().amax(dim=1) if g.shape[1] else g.new_zeros(g.shape[0])
    return torch.where(scale > 0, scale, 1.0)


def products(X, lo, hi, v):
    """``X[:, lo:hi] @ v`` (B, hi - lo) float64, float32 ``X`` widened a few queries at a time.

    A product and a sum over the last axis, not ``bmm``: a batched matrix product may pick
    another kernel (and summation order) for another batch size, this does not, so a
    query's numbers do not depend on the chunk it came in.
    """
    torch = _torch()
    out = torch.empty((X.shape[0], hi - lo), dtype=torch.float64, device=X.device)
    step = max(1, PRODUCT_BYTES // (8 * max(hi - lo, 1) * max(X.shape[2], 1)))
    for a in range(0, X.shape[0], step):
        b = min(a + step, X.shape[0])
        out[a:b] = (X[a:b, lo:hi].double() * v[a:b, None, :]).sum(dim=2)
    return out


def support_gram(XP):
    """``1/2 (1 + XP XP^T)`` (n, t, t) float64 of support rows ``XP`` (n, t, d) float64, batch-independent."""
    torch = _torch()
    n, t, d = XP.shape
    G = torch.empty((n, t, t), dtype=torch.float64, device=XP.device)
    step = max(1, (1 << 22) // max(t * t * d, 1))  # about 32 MiB of products at a time
    for a in range(0, n, step):
        b = min(a + step, n)
        G[a:b] = (XP[a:b, :, None, :] * XP[a:b, None, :, :]).sum(dim=3)
    G += 1.0
    G *= 0.5
    return G


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------------------------------------- engine


def active_set(G, g, tol: float, max_iter: int, warm=None):
    """Candidate weights of ``min_{theta >= 0} 1/2 theta^T G theta - g^T theta`` on the device.

    Parameters
    ----------
    G : tensor (B, k, k) float32 (a leading-block view is fine), g : tensor (B, k) float64
    warm : tensor (B, k) bool, optional: guessed supports (their weights are solved first)

    Returns
    -------
    theta (B, k) float64, iterations (B,) int64, failed (B,) bool: all tensors on G's device.
    ``failed`` marks queries the engine could not finish (iteration limit, a singular
    support, a neighbor refused although its gradient says it should enter).
    """
    torch = _torch()
    dev = g.device
    B, k = g.shape
    theta_out = torch.zeros((B, k), dtype=torch.float64, device=dev)
    iters_out = torch.full((B,), max_iter, dtype=torch.int64, device=dev)
    failed_out = torch.zeros(B, dtype=torch.bool, device=dev)
    if B == 0 or k == 0:
        return theta_out, iters_out, failed_out
    rows = torch.arange(B, device=dev)
    gscale = g_scale(g)
    enter = _ENTER * tol * gscale
    P = warm.clone() if warm is not None else torch.zeros((B, k), dtype=torch.bool, device=dev)
    theta = torch.zeros((B, k), dtype=torch.float64, device=dev)
    blocked = torch.zeros_like(P)
    mode = torch.where(P.any(dim=1), _WARM, _OUTER).to(torch.int8)
    iters = torch.zeros(B, dtype=torch.int64, device=dev)
    failed = torch.zeros(B, dtype=torch.bool, device=dev)
    Gs, gs, es, ss = G, g, enter, gscale
    while True:
        T = min(k, int(P.sum(dim=1).max()) + CHECK_EVERY)
        slots = torch.arange(T, device=dev)
        for _ in range(CHECK_EVERY):
            running = mode != _DONE
            # support indices ascending in the first |P| slots (stable sort), others after
            idx = torch.sort((~P).to(torch.int8), dim=1, stable=True).indices[:, :T]
            cnt = P.sum(dim=1)
            filled = slots[None, :] < cnt[:, None]
            # --- outer step: certify, or pick the entering variable (largest float64 gradient)
            R = torch.gather(Gs, 1, idx[:, :, None].expand(-1, -1, k)).double()  # (n, T, k)
            th_s = torch.where(filled, torch.gather(theta, 1, idx), 0.0)
            w = gs - torch.bmm(th_s[:, None, :], R)[:, 0]
            outer = running & (mode == _OUTER)
            cand = torch.where(P | blocked, -torch.inf, w)
            best, j = cand.max(dim=1)
            finish = outer & (best <= es)
            # a variable that should enter but could not: ill-conditioned, the caller re-solves it
            failed |= finish & (blocked & (w > es[:, None])).any(dim=1)
            mode = torch.where(finish, _DONE, mode)
            go = outer & ~finish
            # the entering variable goes into slot |P| (free: T >= |P| + iterations left in the round)
            at = go[:, None] & (slots[None, :] == cnt[:, None])
            idx2 = torch.where(at, j[:, None], idx)
            filled2 = filled | at
            # --- the active-set system, float64 from the float32 rows, identity in empty slots
            # (the support's rows are R's; only the entering one is read anew)
            row_j = torch.gather(Gs, 1, j[:, None, None].expand(-1, 1, k)).double()  # (n, 1, k)
            R = torch.where(at[:, :, None], row_j, R)
            A = torch.gather(R, 2, idx2[:, None, :].expand(-1, T, -1))
            both = filled2[:, :, None] & filled2[:, None, :]
            A = torch.where(both, A, torch.eye(T, dtype=torch.float64, device=dev))
            rhs = torch.where(filled2, torch.gather(gs, 1, idx2), 0.0)
            L, info = torch.linalg.cholesky_ex(A)
            z = torch.cholesky_solve(rhs[:, :, None], L)[:, :, 0]
            ok = (info == 0) & torch.isfinite(z).all(dim=1)
            pos = cnt.clamp(max=T - 1)[:, None]
            pivot = torch.gather(torch.diagonal(L, dim1=1, dim2=2), 1, pos)[:, 0]
            c = torch.gather(torch.diagonal(A, dim1=1, dim2=2), 1, pos)[:, 0]
            z_new = torch.gather(z, 1, pos)[:, 0]
            # dependent on the support (Schur complement ~ 0), or a non-positive new weight
            refused = go & ~(ok & (pivot * pivot > _DEPENDENT * c.abs()) & (z_new > 0))
            blocked |= torch.zeros_like(blocked).scatter_(1, j[:, None], refused[:, None])
            accepted = go & ~refused
            P = P | torch.zeros_like(P).scatter_(1, j[:, None], accepted[:, None])
            inner = running & ~finish & ~refused
            # a support that was fine before cannot turn singular: count it a failure
            broken = inner & ~accepted & ~ok
            failed |= broken
            mode = torch.where(broken, _DONE, mode)
            inner &= ~broken
            # --- inner step: accept z, or step back towards it and drop a variable
            positive = (z > 0).logical_or(~filled2).all(dim=1)
            take = inner & positive
            is_warm = inner & ~positive & (mode == _WARM)
            back = inner & ~positive & ~is_warm
            th2 = torch.where(filled2, torch.gather(theta, 1, idx2), 0.0)
            den = th2 - z
            cut = filled2 & (z <= 0)
            ratio = torch.where(cut, th2 / torch.where(den > 0, den, 1.0), torch.inf)
            alpha, q = ratio.min(dim=1)
            alpha = torch.where(torch.isfinite(alpha), alpha, 0.0)
            stepped = th2 + alpha[:, None] * (z - th2)
            stepped = torch.where(slots[None, :] == q[:, None], 0.0, stepped)
            new_s = torch.where(take[:, None], z, torch.where(back[:, None], stepped.clamp(min=0.0), th2))
            new_s = torch.where(filled2, new_s, 0.0)
            drop = filled2 & ((back[:, None] & (stepped <= 0)) | (is_warm[:, None] & (z <= 0)))
            new_s = torch.where(drop, 0.0, new_s)
            changed = take | back
            theta = torch.where(changed[:, None], torch.zeros_like(theta).scatter_add_(1, idx2, new_s), theta)
            dropped = torch.zeros(P.shape, dtype=torch.int32, device=dev).scatter_add_(1, idx2, drop.to(torch.int32))
            P = P & (dropped == 0)
            mode = torch.where(take, _OUTER, torch.where(back, _INNER, mode)).to(torch.int8)
            # a warm guess emptied to nothing is a cold start
            mode = torch.where(is_warm & ~P.any(dim=1), _OUTER, mode).to(torch.int8)
            iters += running.to(torch.int64)
            over = (mode != _DONE) & (iters >= max_iter)
            failed |= over
            mode = torch.where(over, _DONE, mode).to(torch.int8)
        done = mode == _DONE
        d = torch.nonzero(done)[:, 0]  # the one look at the host in a round
        if d.numel():
            r = rows[d]
            theta_out[r] = theta[d]
            iters_out[r] = iters[d]
            failed_out[r] = failed[d]
            live = torch.nonzero(~done)[:, 0]
            if not live.numel():
                break
            rows, P, theta, blocked, mode, iters, failed = (
                a[live] for a in (rows, P, theta, blocked, mode, iters, failed)
            )
            Gs, gs, es, ss = Gs[live], gs[live], es[live], ss[live]
    return theta_out, iters_out, failed_out


# ---------------------------------------------------------------------------------------------- polish


def polish(X, k, g, support, tol):
    """Float64 weights on the given supports and their float64 certificate (``cosine.polish`` on the device).

    X : tensor (B, K, d), k : leading neighbors used, g : tensor (B, k) float64, support : (B, k) bool.
    Returns theta (B, k), kkt_residual (B,) (``inf`` where the support's weights are not positive or
    miss ``_ENTER * tol``), objective (B,), v = X^T theta (B, d): float64 tensors.
    """
    torch = _torch()
    dev = g.device
    B, d = X.shape[0], X.shape[2]
    theta = torch.zeros((B, k), dtype=torch.float64, device=dev)
    v = torch.zeros((B, d), dtype=torch.float64, device=dev)
    positive = torch.ones(B, dtype=torch.bool, device=dev)
    size = support.sum(dim=1)
    for t in torch.unique(size).tolist():
        if t == 0:
            continue
        b = torch.nonzero(size == t)[:, 0]
        idx = torch.sort((~support[b]).to(torch.int8), dim=1, stable=True).indices[:, :t]  # ascending
        XP = torch.gather(X[b], 1, idx[:, :, None].expand(-1, -1, d)).double()  # (n, t, d)
        GP = support_gram(XP)
        gP = torch.gather(g[b], 1, idx)
        z, info = torch.linalg.solve_ex(GP, gP[:, :, None])
        z = z[:, :, 0]
        residual = gP - (GP * z[:, None, :]).sum(dim=2)
        z = z + torch.linalg.solve_ex(GP, residual[:, :, None])[0][:, :, 0]  # one refinement step
        ok = (info == 0) & (z > 0).all(dim=1) & torch.isfinite(z).all(dim=1)
        positive[b] = ok
        z = torch.where(ok[:, None], z, 0.0)
        theta[b] = torch.zeros((b.numel(), k), dtype=torch.float64, device=dev).scatter_(1, idx, z)
        v[b] = (z[:, :, None] * XP).sum(dim=1)
    lam = 0.5 * (theta.sum(dim=1)[:, None] + products(X, 0, k, v)) - g
    viol = torch.where(theta > 0, lam.abs(), lam.neg().clamp(min=0.0))
    resid = (viol.amax(dim=1) if k else viol.new_zeros(B)) / g_scale(g)
    resid = torch.where(positive & (resid <= _ENTER * tol), resid, torch.inf)
    objective = 0.5 * (theta * lam).sum(dim=1) - 0.5 * (theta * g).sum(dim=1)
    return theta, resid, objective, v


# ---------------------------------------------------------------------------------------------- the path


def nnk_solve_cosine_torch(X, g, k_values, *, tol: float = 1e-8, max_iter: int | None = None) -> list:
    """NNK weights of the cosine kernel over the leading k neighbors, every k of ``k_values``, on X's device.

    Parameters
    ----------
    X : tensor (B, K, d), float32
        Each query's neighbors, unit rows, nearest first; a row of zeros is a missing neighbor
        (with ``g_j = 0`` it gets no weight).
    g : tensor (B, K), float64
        ``(1 + <q, x_j>) / 2`` (0 for a missing neighbor).
    k_values : increasing ints within 1..K
    tol : float, default=1e-8
        The certificate's relative KKT tolerance (as for ``nnk_solve``).
    max_iter : int, optional
        Engine iterations per query; default ``3 * k + 20``.

    Returns
    -------
    list of (NnkResult, theta tensor)
        Per k: the numpy result (``theta`` (B, k) float64, ``kkt_residual``, ``fallback`` = re-solved
        on the CPU, ``iterations``, ``objective``) and the same weights as a device tensor.
    """
    from nnkcli.numerics.solver import NnkResult

    torch = _torch()
    ks = [int(k) for k in k_values]
    if X.ndim != 3 or tuple(g.shape) != tuple(X.shape[:2]):
        raise InputError(f"X must be (B, K, d) and g (B, K); got shapes {tuple(X.shape)} and {tuple(g.shape)}")
    if not ks or any(b <= a for a, b in itertools.pairwise(ks)) or ks[0] < 1 or ks[-1] > g.shape[1]:
        raise InputError(f"k_values must increase within 1..{g.shape[1]}, got {ks}")
    tol = float(tol)
    g = g.to(torch.float64)
    B = g.shape[0]
    dev = g.device
    G32 = None  # float32 kernel blocks at the largest k, made when the first query needs a solve
    out = []
    prev = None  # (theta, resid, objective, v) tensors of the previous k
    for i_k, k in enumerate(ks):
        gk = g[:, :k].contiguous()
        gscale = g_scale(gk)
        theta = torch.zeros((B, k), dtype=torch.float64, device=dev)
        resid = torch.full((B,), torch.inf, dtype=torch.float64, device=dev)
        objective = torch.zeros(B, dtype=torch.float64, device=dev)
        v = torch.zeros((B, X.shape[2]), dtype=torch.float64, device=dev)
        iters = torch.zeros(B, dtype=torch.int64, device=dev)
        if prev is None:
            todo = torch.arange(B, device=dev)
            warm = None
        else:
            p_theta, p_resid, p_obj, p_v = prev
            kp = p_theta.shape[1]
            # gradient of the new neighbors at the previous optimum, float64: O((k - kp) d)
            w_new = gk[:, kp:] - 0.5 * (p_theta.sum(dim=1)[:, None] + products(X, kp, k, p_v))
            stays = (w_new <= _ENTER * tol * gscale[:, None]).all(dim=1) & (p_resid <= tol)
            theta[:, :kp] = torch.where(stays[:, None], p_theta, 0.0)
            resid = torch.where(stays, torch.maximum(p_resid, w_new.clamp(min=0.0).amax(dim=1) / gscale), resid)
            objective = torch.where(stays, p_obj, objective)
            v = torch.where(stays[:, None], p_v, v)
            todo = torch.nonzero(~stays)[:, 0]
            warm = torch.zeros((todo.numel(), k), dtype=torch.bool, device=dev)
            warm[:, :kp] = p_theta[todo] > 0
            warm[:, kp:] = w_new[todo] > _ENTER * tol * gscale[todo, None]
        if todo.numel():
            limit = 3 * k + 20 if max_iter is None else int(max_iter)
            if G32 is None:
                G32 = cosine_gram32(X[:, : ks[-1]])
            Gk = G32[todo, :k, :k] if warm is not None else G32[:, :k, :k]
            cand, it, _failed = active_set(Gk, gk[todo], tol, limit, warm)
            th, rs, ob, vt = polish(X[todo], k, gk[todo], cand > 0, tol)
            theta[todo], resid[todo], objective[todo], v[todo], iters[todo] = th, rs, ob, vt, it
        # the certificate decides (a "failed" engine query whose polish certifies is fine)
        bad = torch.nonzero(~(resid <= tol))[:, 0]
        fallback = torch.zeros(B, dtype=torch.bool, device=dev)
        if bad.numel():
            theta, resid, objective, v, fallback = _cpu_fallback(
                X, g, ks[: i_k + 1], bad, tol, max_iter, theta, resid, objective, v, fallback
            )
        res = NnkResult(
            theta=theta.cpu().numpy(),
            iterations=iters.cpu().numpy(),
            kkt_residual=resid.cpu().numpy(),
            fallback=fallback.cpu().numpy(),
            objective=objective.cpu().numpy(),
            tol=tol,
        )
        out.append((res, theta))
        prev = (theta, resid, objective, v)
    return out


def _cpu_fallback(X, g, ks, bad, tol, max_iter, theta, resid, objective, v, fallback):
    """Re-solve rows ``bad`` at ``k = ks[-1]`` with the CPU's ``nnk_solve_cosine`` (float64 certificate).

    The CPU path runs over the same leading ``ks`` as the device did, so those rows get
    exactly the CPU path's weights (it is batch-independent), nnk_solve's own fallback behind it.
    """
    from nnkcli.numerics.cosine import nnk_solve_cosine

    torch = _torch()
    k = ks[-1]
    Xb = X[bad, :k].float().cpu().numpy()
    res = nnk_solve_cosine(Xb, g[bad, :k].cpu().numpy(), ks, tol=tol, max_iter=max_iter)[-1]
    dev = theta.device
    tb = torch.from_numpy(res.theta).to(dev)
    theta[bad] = tb
    resid[bad] = torch.from_numpy(res.kkt_residual).to(dev)
    objective[bad] = torch.from_numpy(res.objective).to(dev)
    v[bad] = torch.from_numpy(np.einsum("bk,bkd->bd", res.theta, Xb.astype(np.float64))).to(dev)
    fallback[bad] = True
    return theta, resid, objective, v, fallback
