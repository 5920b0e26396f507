"""The support's float64 linear algebra in the compiled NNK engine (see ``nnkcli.numerics.compiled``).

The support ``P`` (``t`` variables, in entry order) keeps each variable's row widened to
float64 in a slot (``xs[slot[j]]``) and the float64 kernel among them by slot (``GP``); the
active set is the Cholesky factor ``L`` of ``G_PP``, by position in ``P``.
"""

import numba
import numpy as np

#: reassociated sums: the dot products run vectorised (the order is fixed by the code and
#: the CPU, never by the batch)
FASTMATH = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def dot64(a, b):
    """<a, b> with float64 accumulation (a float32 ``a`` widened as read: each product is exact)."""
    s = 0.0
    for t in range(b.shape[0]):
        s += np.float64(a[t]) * b[t]
    return s


@numba.njit(nogil=True, cache=True)
def admit(xr, sj, xs, GP, slot, P, t):
    """Widen row ``xr`` into slot ``sj`` and fill its float64 kernel with the support; returns G_jj."""
    xj = xs[sj]
    for c in range(xj.shape[0]):
        xj[c] = xr[c]
    for a in range(t):
        sa = slot[P[a]]
        val = 0.5 * (1.0 + dot64(xj, xs[sa]))
        GP[sj, sa] = val
        GP[sa, sj] = val
    diag = 0.5 * (1.0 + dot64(xj, xj))
    GP[sj, sj] = diag
    return diag


@numba.njit(nogil=True, cache=True)
def refactor(GP, slot, P, t, L, first):
    """Cholesky factor of G_PP into L[:t, :t] from row ``first`` on; False where it is not positive definite."""
    for a in range(first, t):
        sa = slot[P[a]]
        for c in range(a + 1):
            s = GP[sa, slot[P[c]]]
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
def support_residual(GP, slot, P, t, gb, z, out):
    """out = g_P - G_PP z over the first t entries; returns its largest magnitude (inf if NaN)."""
    worst = 0.0
    for a in range(t):
        sa = slot[P[a]]
        s = gb[P[a]]
        for c in range(t):
            s -= GP[sa, slot[P[c]]] * z[c]
        out[a] = s
        if abs(s) > worst or s != s:
            worst = abs(s) if s == s else np.inf
    return worst


@numba.njit(nogil=True, cache=True)
def support_solve(L, P, t, gb, rhs, z):
    """z = G_PP^{-1} g_P from the Cholesky factor (rhs: scratch).

    No residual here: the Cholesky solve is backward stable, so its residual is almost always
    near rounding; the kernel computes it once per k, for the weights it certifies (a query
    whose residual is above the certificate's bound is flagged and solved by the numpy path).
    """
    for a in range(t):
        rhs[a] = gb[P[a]]
    chol_solve(L, t, rhs, z)


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def combine(xs, slot, P, t, theta, v64, v32):
    """v = sum_a theta_a x_a (float64, from the widened support rows), its float32 copy; returns (sum theta, ||v||)."""
    d = v64.shape[0]
    for c in range(d):
        v64[c] = 0.0
    tsum = 0.0
    a = 0
    while a + 3 < t:
        x0 = xs[slot[P[a]]]
        x1 = xs[slot[P[a + 1]]]
        x2 = xs[slot[P[a + 2]]]
        x3 = xs[slot[P[a + 3]]]
        t0 = theta[P[a]]
        t1 = theta[P[a + 1]]
        t2 = theta[P[a + 2]]
        t3 = theta[P[a + 3]]
        tsum += t0 + t1 + t2 + t3
        for c in range(d):
            v64[c] += t0 * x0[c] + t1 * x1[c] + t2 * x2[c] + t3 * x3[c]
        a += 4
    while a < t:
        x0 = xs[slot[P[a]]]
        t0 = theta[P[a]]
        tsum += t0
        for c in range(d):
            v64[c] += t0 * x0[c]
        a += 1
    n2 = 0.0
    for c in range(d):
        n2 += v64[c] * v64[c]
        v32[c] = np.float32(v64[c])
    return tsum, np.sqrt(n2 * (1.0 + 1e-12) + d * 1e-300)
