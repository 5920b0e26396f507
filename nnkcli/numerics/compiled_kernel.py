"""The compiled kernels behind ``nnkcli.numerics.compiled`` (the one module that imports numba).

Imported only when the compiled path is first used (numba takes ~0.3 s to import); the
functions live at module level so that numba can cache their machine code on disk
(``cache=True``: next to this file, or numba's user cache where that is read-only), and a
new process loads it in well under a second instead of compiling for ~10 s.
"""

import numba
import numpy as np

# reassociated sums: the dot products run vectorised (the order is fixed by the code and
# the CPU, never by the batch)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def kernel_row(Xb, j, lo, hi, out, xj):
    """out[i] = 1/2 (1 + <x_i, x_j>) for lo <= i < hi, float64; False if one is not finite.

    ``xj`` is scratch of length d: x_j is widened into it once, so the inner loop widens
    one operand, not two. Four rows i share each load of x_j: one dot product alone is
    bound by its one chain of additions (about 9.5 GMAC/s measured at k = 200, d = 784),
    four side by side reach about 11.5.
    """
    d = Xb.shape[1]
    for t in range(d):
        xj[t] = Xb[j, t]
    i = lo
    while i + 3 < hi:
        x0 = Xb[i]
        x1 = Xb[i + 1]
        x2 = Xb[i + 2]
        x3 = Xb[i + 3]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for t in range(d):
            v = xj[t]
            s0 += np.float64(x0[t]) * v
            s1 += np.float64(x1[t]) * v
            s2 += np.float64(x2[t]) * v
            s3 += np.float64(x3[t]) * v
        out[i] = 0.5 * (1.0 + s0)
        out[i + 1] = 0.5 * (1.0 + s1)
        out[i + 2] = 0.5 * (1.0 + s2)
        out[i + 3] = 0.5 * (1.0 + s3)
        i += 4
    while i < hi:
        xi = Xb[i]
        s = 0.0
        for t in range(d):
            s += np.float64(xi[t]) * xj[t]
        out[i] = 0.5 * (1.0 + s)
        i += 1
    finite = True
    for i in range(lo, hi):
        if not np.isfinite(out[i]):
            finite = False
    return finite


@numba.njit(nogil=True, cache=True)
def extend_row(Xb, j, s, k, R, ncol, xj):
    """Row ``s`` (variable ``j``) computed up to column k (a sweep extends it as k grows); False if not finite."""
    if ncol[s] >= k:
        return True
    ok = kernel_row(Xb, j, ncol[s], k, R[s], xj)
    ncol[s] = k
    return ok


@numba.njit(nogil=True, cache=True)
def refactor(R, slot, P, t, L):
    """Cholesky factor of G_PP into L[:t, :t]; False where it is not positive definite."""
    for a in range(t):
        ra = R[slot[P[a]]]
        for c in range(a + 1):
            s = ra[P[c]]
            for e in range(c):
                s -= L[a, e] * L[c, e]
            if a == c:
                if not s > 0.0:
                    return False
                L[a, a] = np.sqrt(s)
            else:
                L[a, c] = s / L[c, c]
    return True


@numba.njit(nogil=True, cache=True)
def chol_solve(L, t, rhs, out):
    """out = (L L^T)^{-1} rhs over the first t entries."""
    for a in range(t):
        s = rhs[a]
        for e in range(a):
            s -= L[a, e] * out[e]
        out[a] = s / L[a, a]
    for a in range(t - 1, -1, -1):
        s = out[a]
        for e in range(a + 1, t):
            s -= L[e, a] * out[e]
        out[a] = s / L[a, a]


@numba.njit(nogil=True, cache=True)
def support_residual(R, slot, P, t, gb, z, out):
    """out = g_P - G_PP z over the first t entries; returns its largest magnitude (inf if NaN)."""
    worst = 0.0
    for a in range(t):
        ra = R[slot[P[a]]]
        s = gb[P[a]]
        for c in range(t):
            s -= ra[P[c]] * z[c]
        out[a] = s
        if abs(s) > worst or s != s:
            worst = abs(s) if s == s else np.inf
    return worst


@numba.njit(nogil=True, cache=True)
def support_solve(R, slot, P, t, L, gb, z, rhs, corr, good):
    """z = G_PP^{-1} g_P; returns max |G_PP z - g_P|.

    One step of iterative refinement follows where that residual exceeds ``good``: the
    Cholesky solve is backward stable, so its residual is almost always near rounding (~1e-15
    max|g|) and far below ``good`` (1e-12 max|g|); skipping the second solve and residual took
    10 % off a 20-k sweep's NNK. Whatever z is, the certificate is computed from it.
    """
    for a in range(t):
        rhs[a] = gb[P[a]]
    chol_solve(L, t, rhs, z)
    first = support_residual(R, slot, P, t, gb, z, rhs)
    if first <= good:
        return first
    chol_solve(L, t, rhs, corr)
    for a in range(t):
        z[a] += corr[a]
    return support_residual(R, slot, P, t, gb, z, rhs)


@numba.njit(nogil=True, cache=True)
def gradient(R, slot, P, t, theta, gb, lo, hi, w):
    """w[j] = g_j - (G theta)_j for lo <= j < hi, from the support's rows."""
    for j in range(lo, hi):
        w[j] = gb[j]
    for a in range(t):
        p = P[a]
        ra = R[slot[p]]
        th = theta[p]
        for j in range(lo, hi):
            w[j] -= th * ra[j]


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
    R = np.empty((cap, K))  # kept kernel rows, by slot
    ncol = np.zeros(cap, dtype=np.int64)  # columns of R[slot] computed so far (a sweep extends them)
    slot = np.full(K, -1, dtype=np.int64)  # variable -> slot of its kept row
    owner = np.full(cap, -1, dtype=np.int64)  # slot -> variable
    L = np.zeros((cap, cap))
    P = np.empty(cap, dtype=np.int64)  # the support, in entry order
    z = np.empty(cap)
    rhs = np.empty(cap)
    corr = np.empty(cap)
    theta = np.zeros(K)
    w = np.zeros(K)
    xj = np.empty(d)  # the entering neighbor, widened
    in_set = np.zeros(K, dtype=np.bool_)
    blocked = np.zeros(K, dtype=np.bool_)
    for b in range(B):
        Xb = X[b]
        gb = g[b]
        for s in range(cap):
            if owner[s] >= 0:
                slot[owner[s]] = -1
                owner[s] = -1
        used = 0
        t = 0
        theta[:] = 0.0
        in_set[:] = False
        bad = False
        kp = 0
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
            good = 1e-2 * exact  # a first solve this close needs no refinement
            for j in range(k):
                blocked[j] = False
            # the support's rows reach only the previous k: extend them to this one
            for a in range(t):
                if not extend_row(Xb, P[a], slot[P[a]], k, R, ncol, xj):
                    bad = True
            gradient(R, slot, P, t, theta, gb, kp, k, w)
            it = 0
            while not bad:
                best = -np.inf
                jb = -1
                for j in range(k):
                    if not in_set[j] and not blocked[j] and w[j] > best:
                        best = w[j]
                        jb = j
                if not (best > enter):
                    if best != best:
                        bad = True
                    break
                if it >= max_iter or t == cap:
                    bad = True
                    break
                it += 1
                if slot[jb] < 0:
                    if used == cap:  # keep only the support's rows
                        for s in range(cap):
                            if owner[s] >= 0 and not in_set[owner[s]]:
                                slot[owner[s]] = -1
                                owner[s] = -1
                        used = 0
                        for s in range(cap):
                            if owner[s] >= 0:
                                if s != used:
                                    R[used, :] = R[s, :]
                                    ncol[used] = ncol[s]
                                    owner[used] = owner[s]
                                    slot[owner[s]] = used
                                    owner[s] = -1
                                used += 1
                    slot[jb] = used
                    owner[used] = jb
                    ncol[used] = 0
                    used += 1
                if not extend_row(Xb, jb, slot[jb], k, R, ncol, xj):
                    bad = True
                    break
                rj = R[slot[jb]]
                # extend the factor: L l = G_Pj, pivot^2 = G_jj - l.l
                piv = rj[jb]
                for a in range(t):
                    s = rj[P[a]]
                    for e in range(a):
                        s -= L[a, e] * L[t, e]
                    L[t, a] = s / L[a, a]
                    piv -= L[t, a] * L[t, a]
                if not piv > dependent * abs(rj[jb]):
                    blocked[jb] = True  # numerically dependent on the support
                    continue
                L[t, t] = np.sqrt(piv)
                P[t] = jb
                t += 1
                in_set[jb] = True
                worst = support_solve(R, slot, P, t, L, gb, z, rhs, corr, good)
                if not z[t - 1] > 0.0:  # exact arithmetic rules this out: refuse the variable
                    t -= 1
                    in_set[jb] = False
                    blocked[jb] = True
                    worst = support_solve(R, slot, P, t, L, gb, z, rhs, corr, good)
                # step back towards z while some weight would be non-positive
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
                    for a in range(t):
                        p = P[a]
                        if theta[p] > 0.0:
                            P[n] = p
                            n += 1
                        else:
                            theta[p] = 0.0
                            in_set[p] = False
                    t = n
                    if not refactor(R, slot, P, t, L):
                        bad = True
                        break
                    worst = support_solve(R, slot, P, t, L, gb, z, rhs, corr, good)
                if bad:
                    break
                for a in range(t):
                    theta[P[a]] = z[a]
                if not worst <= exact:
                    bad = True
                    break
                gradient(R, slot, P, t, theta, gb, 0, k, w)
            if bad:
                for kj in range(ki, nk):
                    failed[kj, b] = True
                break
            viol = 0.0
            obj = 0.0
            for j in range(k):
                v = abs(w[j]) if in_set[j] else max(w[j], 0.0)
                if v > viol:
                    viol = v
                obj -= 0.5 * theta[j] * (gb[j] + w[j])
                if blocked[j] and w[j] > enter:
                    failed[ki, b] = True
                flat[b, offsets[ki] + j] = theta[j]
            residual[ki, b] = viol / gs
            iterations[ki, b] = it
            objective[ki, b] = obj
            kp = k
