"""The compiled kernels behind ``nnkcli.numerics.compiled`` (this package is numba's one owner).

Imported only when the compiled path is first used (numba takes ~0.3 s to import); the
functions live at module level so that numba can cache their machine code on disk
(``cache=True``: next to this file, or numba's user cache where that is read-only), and a
new process loads it in well under a second instead of compiling for ~10 s.

The engine and the error bound of its float32 gradient estimates are described in
``nnkcli.numerics.compiled``'s docstring.
"""

import numba
import numpy as np

from nnkcli.numerics.compiled_kernel.support import (
    FASTMATH,
    admit,
    combine,
    dot64,
    refactor,
    support_residual,
    support_solve,
)

#: float32's unit roundoff
U32 = 2.0**-24
#: a bound on what gradual underflow adds to one product or sum (per coordinate, generously)
UNDER = 2.0**-140

#: runners-up of a gradient pass kept: after a step they are tried (in float64) before another pass
RUNNERS_UP = 4


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def products32(Xb, lo, hi, v32, out):
    """out[i] = <x_i, v32> in float32 arithmetic (any order), widened, for lo <= i < hi."""
    d = Xb.shape[1]
    i = lo
    while i + 3 < hi:
        x0 = Xb[i]
        x1 = Xb[i + 1]
        x2 = Xb[i + 2]
        x3 = Xb[i + 3]
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for t in range(d):
            v = v32[t]
            s0 += np.float32(x0[t]) * v
            s1 += np.float32(x1[t]) * v
            s2 += np.float32(x2[t]) * v
            s3 += np.float32(x3[t]) * v
        out[i] = s0
        out[i + 1] = s1
        out[i + 2] = s2
        out[i + 3] = s3
        i += 4
    while i < hi:
        xi = Xb[i]
        s = np.float32(0.0)
        for t in range(d):
            s += np.float32(xi[t]) * v32[t]
        out[i] = s
        i += 1


@numba.njit(nogil=True, cache=True)
def norm_bound(n32, grow, d):
    """An upper bound on ||x||_2 from n32, the float32 sum of its squares (any order, underflow included)."""
    return np.sqrt(np.float64(n32) * grow + d * 2.0**-148) * (1.0 + 1e-12)


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def products32n(Xb, lo, hi, v32, out, xn):
    """``products32``, and in the same pass (a row's first) an upper bound on ||x_i||_2 into xn[i]."""
    d = Xb.shape[1]
    grow = 1.0 / (1.0 - (d + 2) * U32)
    for i in range(lo, hi):
        xi = Xb[i]
        s = np.float32(0.0)
        n = np.float32(0.0)
        for t in range(d):
            a = np.float32(xi[t])
            s += a * v32[t]
            n += a * a
        out[i] = s
        xn[i] = norm_bound(n, grow, d)


@numba.njit(nogil=True, cache=True)
def exact_gradient(Xb, gb, j, tsum, v64):
    """w_j = g_j - 1/2 (sum(theta) + <x_j, v>) in float64."""
    return gb[j] - 0.5 * (tsum + dot64(Xb[j], v64))


@numba.njit(nogil=True, cache=True)
def make_exact(Xb, gb, k, tsum, v64, in_set, w, err, known):
    """Recompute in float64 every gradient outside the support whose estimate may be positive."""
    for j in range(k):
        if not in_set[j] and not known[j] and w[j] + err[j] > 0.0:
            w[j] = exact_gradient(Xb, gb, j, tsum, v64)
            err[j] = 0.0
            known[j] = True


@numba.njit(nogil=True, cache=True)
def gradient32(Xb, gb, lo, hi, nn, t, v32, tsum, vnorm, cd, xn, s32, w, err, known):
    """Float32 estimates of w_j = g_j - (G theta)_j for lo <= j < hi, with rigorous error bounds.

    Rows from ``nn`` on get their norm bound in the same pass; returns (rows with norms, finite).
    With an empty support the gradient is g itself, exactly.
    """
    d = Xb.shape[1]
    if t == 0:
        for j in range(lo, hi):
            w[j] = gb[j]
            err[j] = 0.0
            known[j] = True
        return nn, True
    if nn < hi:
        a = max(lo, nn)
        products32n(Xb, a, hi, v32, s32, xn)
        if lo < a:
            products32(Xb, lo, a, v32, s32)
        nn = hi
    else:
        products32(Xb, lo, hi, v32, s32)
    ok = True
    for j in range(lo, hi):
        s = np.float64(s32[j])
        w[j] = gb[j] - 0.5 * (tsum + s)
        err[j] = cd * xn[j] * vnorm + 1e-14 * (1.0 + abs(gb[j]) + abs(tsum) + abs(s)) + d * UNDER * (1.0 + xn[j])
        known[j] = False
        if not (w[j] == w[j]) or abs(w[j]) == np.inf:
            ok = False
    return nn, ok


@numba.njit(nogil=True, cache=True)
def runners_up(w, err, in_set, blocked, k, jb, enter, cands):
    """The (up to ``RUNNERS_UP``) best estimates but ``jb``'s that may exceed ``enter``, ascending; returns how many."""
    nc = 0
    for j in range(k):
        if j == jb or in_set[j] or blocked[j] or not w[j] + err[j] > enter:
            continue
        if nc == RUNNERS_UP:  # full: j replaces the lowest, if above it
            if not w[j] > w[cands[0]]:
                continue
            a = 0
            while a + 1 < nc and w[cands[a + 1]] < w[j]:
                cands[a] = cands[a + 1]
                a += 1
        else:
            a = nc
            nc += 1
            while a > 0 and w[cands[a - 1]] > w[j]:
                cands[a] = cands[a - 1]
                a -= 1
        cands[a] = j
    return nc


@numba.njit(nogil=True, cache=True)
def kernel(
    X,
    g,
    ks,
    tol,
    enter_rel,
    exact_rel,
    dependent,
    max_iter,
    row_cap,
    flat,
    offsets,
    residual,
    iterations,
    objective,
    failed,
):
    B, K, d = X.shape
    nk = ks.size
    cap = min(K, row_cap)
    GP = np.empty((cap, cap))  # the kernel among the support, by slot
    xs = np.empty((cap, d))  # the support's rows, widened, by slot
    free = np.empty(cap, dtype=np.int64)
    slot = np.full(K, -1, dtype=np.int64)  # variable -> slot while in the support
    L = np.empty((cap, cap))  # every entry read is written first
    P = np.empty(cap, dtype=np.int64)
    z = np.empty(cap)
    rhs = np.empty(cap)
    theta = np.zeros(K)
    w = np.zeros(K)
    err = np.zeros(K)
    known = np.zeros(K, dtype=np.bool_)
    s32 = np.zeros(K, dtype=np.float32)
    xn = np.zeros(K)
    v64 = np.zeros(d)
    v32 = np.zeros(d, dtype=np.float32)
    in_set = np.zeros(K, dtype=np.bool_)
    blocked = np.zeros(K, dtype=np.bool_)
    cands = np.empty(RUNNERS_UP, dtype=np.int64)
    cd = 2.0 * (d + 2) * U32 / (1.0 - (d + 2) * U32)  # twice gamma_{d+2}(u): the module docstring
    for b in range(B):
        Xb = X[b]
        gb = g[b]
        for s in range(cap):
            free[s] = cap - 1 - s
        nfree = cap
        slot[:] = -1
        t = 0
        theta[:] = 0.0
        in_set[:] = False
        bad = False
        kp = 0
        nn = 0
        tsum = 0.0
        vnorm = 0.0
        v32[:] = 0.0
        v64[:] = 0.0
        for ki in range(nk):
            k = ks[ki]
            gs = 0.0
            for j in range(k):
                if abs(gb[j]) > gs:
                    gs = abs(gb[j])
            if gs == 0.0 or gs != gs:
                gs = 1.0
            enter = enter_rel * tol * gs
            exact = exact_rel * tol * gs
            blocked[:k] = False
            nn, ok = gradient32(Xb, gb, kp, k, nn, t, v32, tsum, vnorm, cd, xn, s32, w, err, known)
            if not ok:
                bad = True
            worst = 0.0
            it = 0
            fresh = True  # w holds the estimates at the current theta
            nc = 0
            while not bad:
                jb = -1
                best = -np.inf
                if not fresh:  # the last pass's runners-up first, best first, each checked in float64 now
                    while nc > 0 and jb < 0:
                        nc -= 1
                        c = cands[nc]
                        if not in_set[c] and not blocked[c] and exact_gradient(Xb, gb, c, tsum, v64) > enter:
                            jb = c
                    if jb < 0:
                        nn, fresh = gradient32(Xb, gb, 0, k, nn, t, v32, tsum, vnorm, cd, xn, s32, w, err, known)
                        if not fresh:
                            bad = True
                            break
                if fresh:
                    # the candidate: the largest estimate, if it surely exceeds the entry threshold
                    for j in range(k):
                        if not in_set[j] and not blocked[j] and w[j] > best:
                            best = w[j]
                            jb = j
                    nc = runners_up(w, err, in_set, blocked, k, jb, enter, cands)
                if fresh and jb >= 0 and not (best - err[jb] > enter):  # not surely: decide on float64 values
                    make_exact(Xb, gb, k, tsum, v64, in_set, w, err, known)
                    jb = -1
                    best = enter
                    for j in range(k):
                        if not in_set[j] and not blocked[j] and w[j] > best:
                            best = w[j]
                            jb = j
                if jb < 0:  # no entry: the support's residual (rhs), which the certificate checks
                    for a in range(t):
                        z[a] = theta[P[a]]
                    worst = support_residual(GP, slot, P, t, gb, z, rhs)
                    break
                if it >= max_iter or t == cap:
                    bad = True
                    break
                it += 1
                nfree -= 1
                sj = free[nfree]
                slot[jb] = sj
                diag = admit(Xb[jb], sj, xs, GP, slot, P, t)
                if not np.isfinite(diag):
                    bad = True
                    break
                piv = diag
                for a in range(t):
                    s = GP[sj, slot[P[a]]]
                    for e in range(a):
                        s -= L[a, e] * L[t, e]
                    L[t, a] = s / L[a, a]
                    piv -= L[t, a] * L[t, a]
                if not piv > dependent * abs(diag):
                    blocked[jb] = True
                    slot[jb] = -1
                    free[nfree] = sj
                    nfree += 1
                    continue
                L[t, t] = np.sqrt(piv)
                P[t] = jb
                t += 1
                in_set[jb] = True
                support_solve(L, P, t, gb, rhs, z)
                if not z[t - 1] > 0.0:
                    t -= 1
                    in_set[jb] = False
                    blocked[jb] = True
                    slot[jb] = -1
                    free[nfree] = sj
                    nfree += 1
                    support_solve(L, P, t, gb, rhs, z)
                while True:
                    neg = False
                    for a in range(t):
                        if not z[a] > 0.0:
                            neg = True
                    if not neg:
                        break
                    if it >= max_iter:
                        bad = True
                        break
                    it += 1
                    alpha = np.inf
                    q = -1
                    for a in range(t):
                        if not z[a] > 0.0:
                            th = theta[P[a]]
                            den = th - z[a]
                            r = th / den if den > 0.0 else np.inf
                            if r < alpha:
                                alpha = r
                                q = a
                    if q < 0:
                        bad = True
                        break
                    for a in range(t):
                        th = theta[P[a]]
                        theta[P[a]] = th + alpha * (z[a] - th)
                    theta[P[q]] = 0.0
                    n = 0
                    first = t
                    for a in range(t):
                        p = P[a]
                        if theta[p] > 0.0:
                            P[n] = p
                            n += 1
                        else:
                            theta[p] = 0.0
                            in_set[p] = False
                            free[nfree] = slot[p]
                            nfree += 1
                            slot[p] = -1
                            if first == t:
                                first = a
                    t = n
                    if not refactor(GP, slot, P, t, L, min(first, t)):
                        bad = True
                        break
                    support_solve(L, P, t, gb, rhs, z)
                if bad:
                    break
                for a in range(t):
                    theta[P[a]] = z[a]
                tsum, vnorm = combine(xs, slot, P, t, theta, v64, v32)
                fresh = False
            if bad or not worst <= exact:
                for kj in range(ki, nk):
                    failed[kj, b] = True
                break
            # the certificate: the support's equations (rhs holds g_P - G_PP theta_P) and every
            # other gradient, in float64 where its estimate may be positive (else it is <= 0)
            viol = 0.0
            obj = 0.0
            for a in range(t):
                p = P[a]
                r = abs(rhs[a])
                if r > viol:
                    viol = r
                obj -= 0.5 * theta[p] * (gb[p] + rhs[a])
            make_exact(Xb, gb, k, tsum, v64, in_set, w, err, known)
            for j in range(k):
                if not in_set[j] and known[j]:
                    if w[j] > viol:
                        viol = w[j]
                    if blocked[j] and w[j] > enter:
                        failed[ki, b] = True
            for j in range(k):
                flat[b, offsets[ki] + j] = theta[j]
            residual[ki, b] = viol / gs
            iterations[ki, b] = it
            objective[ki, b] = obj
            kp = k
