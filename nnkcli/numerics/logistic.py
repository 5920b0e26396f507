"""Multinomial logistic regression with an L2 penalty, fitted by L-BFGS (pure numpy/scipy).

The model of a linear probe: class scores ``z = x W + b`` for features x (d,), weights W
(d, K) and a bias b (K,), trained by minimising scikit-learn's objective for
``LogisticRegression(C=C, solver="lbfgs")`` with K >= 3 classes (multinomial)::

    0.5 * ||W||² + C * Σᵢ CEᵢ        CEᵢ = logsumexp(zᵢ) - zᵢ,yᵢ

The bias is not penalised (as scikit-learn's lbfgs leaves the intercept out of the penalty,
``LinearModelLoss.l2_penalty`` of sklearn 1.x). The function minimised here is that objective
divided by ``C n`` — the mean cross-entropy plus ``||W||² / (2 C n)`` — which has the same
minimiser and is what scikit-learn hands to L-BFGS too, so the same gradient tolerance means
the same convergence.

The two products that cost (the logits ``X W`` and the gradient ``Xᵀ (P - Y)``) run as
float32 GEMMs, on every thread the BLAS is allowed; the per-row losses are accumulated in
float64 from the float32 logits (the sum of n small terms is where float32 would lose the
digits the line search needs), and the gradient is returned in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: scikit-learn's defaults for LogisticRegression(solver="lbfgs"): the gradient tolerance and the line search
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000
MAX_LINE_SEARCH = 50
#: rows sampled (evenly spaced) to measure the curvature the fit is preconditioned with
CURVATURE_ROWS = 32768
CLASS_CURVATURE_ROWS = 8192
#: the L-BFGS memory (scipy's and scikit-learn's default ``maxcor``)
LBFGS_MEMORY = 10


@dataclass(frozen=True)
class SoftmaxModel:
    """A fitted linear classifier: ``scores = X @ weights + bias``.

    Attributes
    ----------
    weights : ndarray (d, K) float32
    bias : ndarray (K,) float32
    C : float, the inverse penalty it was fitted at
    n_iter : int, L-BFGS iterations
    converged : bool, whether L-BFGS met its tolerance (else it hit ``max_iter`` or a failed line search)
    objective : float, the final value of the scaled objective (mean CE + ||W||² / (2 C n))
    n_eval : int, evaluations of the objective and its gradient (each two n x d x K products)
    cross_entropy : tuple (float, ndarray ((d + 1) * K,) float64) or None
        The mean cross-entropy and its gradient in W, b at :attr:`theta`, on the rows fitted:
        with them the objective at any other C is known there without a pass over the rows
        (the penalty is analytic), which is what ``fit_softmax(anchor=)`` uses.
    """

    weights: np.ndarray
    bias: np.ndarray
    C: float
    n_iter: int
    converged: bool
    objective: float
    n_eval: int = 0
    cross_entropy: tuple[float, np.ndarray] | None = None

    @property
    def theta(self) -> np.ndarray:
        """The flat float64 parameter vector (W row-major, then b): a warm start for the next fit."""
        return np.concatenate([self.weights.astype(np.float64).ravel(), self.bias.astype(np.float64)])

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class scores (logits) of rows X (m, d): (m, K) float32."""
        Z = np.asarray(X, dtype=np.float32) @ self.weights
        Z += self.bias
        return Z


def softmax_objective(theta: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int, C: float):
    """The scaled objective and its gradient at ``theta``.

    Parameters
    ----------
    theta : ndarray ((d + 1) * K,) float64
        W (d, K) row-major, then b (K,).
    X : ndarray (n, d) float32
    y : ndarray (n,) int64, classes 0..K-1
    n_classes : int, K
    C : float > 0, the inverse penalty strength

    Returns
    -------
    value : float
        ``mean_i CE_i + ||W||² / (2 C n)``.
    grad : ndarray ((d + 1) * K,) float64
    """
    ce, ce_grad = cross_entropy(theta, X, y, n_classes)
    return with_penalty(theta, ce, ce_grad, X.shape[1] * int(n_classes), C, X.shape[0])


def with_penalty(theta: np.ndarray, ce: float, ce_grad: np.ndarray, dK: int, C: float, n: int):
    """The scaled objective and gradient at ``theta`` from its mean cross-entropy part: adds ``||W||² / (2 C n)``."""
    penalty = 1.0 / (C * n)
    W64 = theta[:dK]
    grad = ce_grad.copy()
    grad[:dK] += penalty * W64
    return ce + 0.5 * penalty * float(np.dot(W64, W64)), grad


def cross_entropy(theta: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int, work: np.ndarray | None = None):
    """The mean cross-entropy ``mean_i CE_i`` at ``theta`` and its gradient in W, b (float64), no penalty.

    The arguments as :func:`softmax_objective`'s; ``work``, a float32 (K, n) array to hold the
    logits (a fit passes the same one to each evaluation: a fresh (K, n) array each time is
    n K / 1024 new pages of memory to fault in, which some virtual machines make slow). This
    is the pass over the rows; the penalty's part of the objective is analytic (:func:`with_penalty`).
    """
    n, d = X.shape
    K = int(n_classes)
    W = theta[: d * K].reshape(d, K).astype(np.float32)
    b = theta[d * K :].astype(np.float32)
    # classes on the rows (K, n): the reductions over classes then run along whole rows of n values,
    # which numpy vectorises, where an (n, K) layout reduces K < 100 values per row, 5-10x slower
    ZT = np.empty((K, n), dtype=np.float32) if work is None else work
    np.matmul(W.T, X.T, out=ZT)  # float32 GEMM: the cost
    ZT += b[:, None]
    rows = np.arange(n)
    ZT -= ZT.max(axis=0)  # after the shift exp() cannot overflow, and log s >= 0
    true = ZT[y, rows].astype(np.float64)
    np.exp(ZT, out=ZT)
    s = ZT.sum(axis=0, dtype=np.float64)
    loss = float(np.sum(np.log(s) - true))  # float64 over the rows
    ZT *= (1.0 / s).astype(np.float32)  # P
    ZT[y, rows] -= 1.0  # P - Y
    scale = 1.0 / n
    grad_W = (ZT @ X).T.astype(np.float64)  # float32 GEMM
    grad_W *= scale
    grad_b = ZT.sum(axis=1, dtype=np.float64) * scale
    return loss * scale, np.concatenate([grad_W.ravel(), grad_b])


@dataclass(frozen=True)
class FeatureCurvature:
    """The feature side of the objective's curvature: the mean and the covariance's eigenpairs.

    The Hessian of the mean cross-entropy in W is ``(1/n) Σᵢ xᵢxᵢᵀ ⊗ Sᵢ`` (Sᵢ the softmax
    covariance ``diag(pᵢ) - pᵢpᵢᵀ`` of row i); with the rows centred (the unpenalised bias
    absorbs the mean) it is close to ``Σ ⊗ Ā``, Σ the features' covariance and Ā the mean of the
    Sᵢ. Features with a steep spectrum (self-supervised ones: a few strong directions) make that
    ill-conditioned, and L-BFGS then needs many iterations at a large C, where the penalty no
    longer fills the weak directions. The fit changes variables so that this approximation of the
    Hessian, plus the penalty, becomes the identity: L-BFGS then sees a well-conditioned problem.
    The change of variables is exact (the same objective and minimiser, only the path differs).

    Attributes
    ----------
    mean : ndarray (d,) float64
    sigma : ndarray (d,) float64, the covariance's eigenvalues (>= 0)
    vectors : ndarray (d, d) float64, its eigenvectors (columns)
    """

    mean: np.ndarray
    sigma: np.ndarray
    vectors: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray, rows: np.ndarray | None = None, max_rows: int = CURVATURE_ROWS) -> FeatureCurvature:
        """Measured on at most ``max_rows`` evenly spaced rows of X (n, d) (of its ``rows`` when given)."""
        Xs = _rows(X, max_rows) if rows is None else np.asarray(X[_rows(rows, max_rows)], dtype=np.float32)
        mean = Xs.mean(axis=0, dtype=np.float64)
        Xc = Xs - mean.astype(np.float32)
        cov = (Xc.T @ Xc).astype(np.float64) / max(1, Xs.shape[0])
        sigma, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
        return cls(mean=mean, sigma=np.clip(sigma, 0.0, None), vectors=vectors)


def _rows(X: np.ndarray, max_rows: int) -> np.ndarray:
    step = max(1, -(-X.shape[0] // max_rows))
    return X[::step]


class _Space:
    """The variables L-BFGS moves: here W, b themselves (theta)."""

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        return u

    def to_u(self, theta: np.ndarray) -> np.ndarray:
        return theta

    def to_u_grad(self, grad: np.ndarray) -> np.ndarray:
        return grad


class _Preconditioned(_Space):
    """Variables (u, v) with ``W = P u``, ``b = Q v - Wᵀ mean``.

    P is ``(Σ ⊗ Ā + λ)^(-1/2)`` (λ = 1 / (C n), the penalty's curvature) and Q is ``Ā^(-1/2)``,
    both applied in the eigenbases of Σ (d x d) and Ā (K x K), so each costs O(d²K + dK²), nothing
    next to the n d K of a gradient. Ā is measured at the start point, on a sample of rows.
    """

    def __init__(self, curvature: FeatureCurvature, X: np.ndarray, theta0: np.ndarray, K: int, lam: float):
        d = X.shape[1]
        W0 = theta0[: d * K].reshape(d, K).astype(np.float32)
        Z = _rows(X, CLASS_CURVATURE_ROWS) @ W0
        Z += theta0[d * K :].astype(np.float32)
        Z -= Z.max(axis=1, keepdims=True)
        Pr = np.exp(Z, dtype=np.float64)
        Pr /= Pr.sum(axis=1, keepdims=True)
        A = np.diag(Pr.mean(axis=0)) - (Pr.T @ Pr) / Pr.shape[0]
        a, self.V = np.linalg.eigh(0.5 * (A + A.T))
        a = np.clip(a, 0.0, None)
        self.d, self.K = d, K
        self.mean = curvature.mean
        self.U = curvature.vectors
        self.s = 1.0 / np.sqrt(np.outer(curvature.sigma, a) + lam)  # (d, K)
        # the bias is not penalised: the direction of all-equal biases (a = 0) changes nothing, keep it finite
        self.t = 1.0 / np.sqrt(a + 1e-6 * max(float(a.max()), 1e-12))

    def _w(self, M: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return self.U @ ((self.U.T @ M @ self.V) * scale) @ self.V.T

    def _c(self, v: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return self.V @ ((self.V.T @ v) * scale)

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        dK = self.d * self.K
        W = self._w(u[:dK].reshape(self.d, self.K), self.s)
        b = self._c(u[dK:], self.t) - W.T @ self.mean
        return np.concatenate([W.ravel(), b])

    def to_u(self, theta: np.ndarray) -> np.ndarray:
        dK = self.d * self.K
        W = theta[:dK].reshape(self.d, self.K)
        c = theta[dK:] + W.T @ self.mean
        return np.concatenate([self._w(W, 1.0 / self.s).ravel(), self._c(c, 1.0 / self.t)])

    def to_u_grad(self, grad: np.ndarray) -> np.ndarray:
        dK = self.d * self.K
        gb = grad[dK:]
        gW = grad[:dK].reshape(self.d, self.K) - np.outer(self.mean, gb)
        return np.concatenate([self._w(gW, self.s).ravel(), self._c(gb, self.t)])


def fit_softmax(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    *,
    theta0: np.ndarray | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    curvature: FeatureCurvature | bool | None = None,
    monitor: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    check_every: int = 1,
    anchor: SoftmaxModel | None = None,
) -> SoftmaxModel:
    """Fit W, b at ``C`` by L-BFGS-B, from ``theta0`` (a warm start) or zeros (scikit-learn's start).

    Parameters
    ----------
    X : ndarray (n, d) float32
    y : ndarray (n,) int64 in 0..K-1
    n_classes : int, K >= 2 (every class should have a row: a class without one drives its bias
        towards -inf, and the fit ends at ``max_iter``)
    C : float > 0
    theta0 : ndarray ((d + 1) * K,) float64, optional
    tol : float, the gradient tolerance (scikit-learn's ``tol``, same scale): the fit has converged
        once every component of the gradient in W, b is at most ``tol`` in absolute value
    max_iter : int, the most L-BFGS iterations
    curvature : FeatureCurvature, True, or None
        Precondition L-BFGS with the features' covariance (see :class:`FeatureCurvature`; True:
        measure it on X here). None or False: plain L-BFGS-B on W, b, as scikit-learn runs it.
    monitor : callable, optional
        ``monitor(W, b) -> bool``, called every ``check_every`` iterations with the current
        weights (d, K) and bias (K,), float32: True stops the fit there (``converged`` stays False).
    anchor : SoftmaxModel, optional
        A fit on the *same* X and y at another C (the previous point of a C path). With the
        preconditioned L-BFGS, the fit starts at the anchor, whose objective at this C is known
        without a pass over the rows (its cross-entropy part is kept, the penalty is analytic),
        and takes ``theta0`` as its first trial step: a pass over the rows fewer than starting
        at ``theta0``, and a step back towards the anchor where ``theta0`` overshoots.

    Returns
    -------
    SoftmaxModel
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n, d = X.shape
    K = int(n_classes)
    if not (C > 0 and np.isfinite(C)):
        raise ValueError(f"C must be a positive number, got {C!r}")
    if y.shape != (n,) or (n and (y.min() < 0 or y.max() >= K)):
        raise ValueError(f"y must be (n,) classes in 0..{K - 1}")
    theta_start = np.zeros((d + 1) * K) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if curvature is True:
        curvature = FeatureCurvature.of(X)
    if isinstance(curvature, FeatureCurvature):
        space: _Space = _Preconditioned(curvature, X, theta_start, K, 1.0 / (C * n))
    else:
        space = _Space()

    last: dict = {}  # the cross-entropy part at the last point evaluated, for the model's anchor
    work = np.empty((K, n), dtype=np.float32)  # the logits of every evaluation

    def objective(theta: np.ndarray):
        ce, ce_grad = cross_entropy(theta, X, y, K, work)
        last.update(theta=theta, cross_entropy=(ce, ce_grad))
        return with_penalty(theta, ce, ce_grad, d * K, C, n)

    first = None
    if anchor is not None and anchor.cross_entropy is not None and isinstance(space, _Preconditioned):
        origin = anchor.theta
        if origin.shape != theta_start.shape:
            raise ValueError(f"anchor has {origin.size} parameters, this fit {theta_start.size}")
        value0, g0 = with_penalty(origin, *anchor.cross_entropy, d * K, C, n)
        last.update(theta=origin, cross_entropy=anchor.cross_entropy)
        if theta0 is not None:
            first = space.to_u(theta_start) - space.to_u(origin)
        theta_start, evaluations = origin, 0
    else:
        value0, g0 = objective(theta_start)
        evaluations = 1
    counter = {"evaluations": evaluations}

    def evaluate(u):
        counter["evaluations"] += 1
        return objective(space.to_theta(u))

    watch: Callable[[np.ndarray], bool] | None = None
    if monitor is not None:
        check = monitor

        def watch(u: np.ndarray) -> bool:
            theta = space.to_theta(u)
            return bool(check(theta[: d * K].reshape(d, K).astype(np.float32), theta[d * K :].astype(np.float32)))

    # the start already meets the tolerance (an anchor is not the start: the fit is asked to move along the path;
    # the tolerance is loose enough that the previous solution often meets it at the next C, weights unchanged)
    if first is None and np.max(np.abs(g0)) <= tol:
        theta, n_iter, converged, value = theta_start, 0, True, value0
    elif isinstance(space, _Preconditioned):
        u, value, n_iter, converged = _lbfgs(
            evaluate,
            space,
            space.to_u(theta_start),
            value0,
            g0,
            tol=tol,
            max_iter=max_iter,
            watch=watch,
            check_every=check_every,
            first=first,
        )
        theta = space.to_theta(u)
    else:
        theta, value, n_iter, converged = _scipy_lbfgs(
            evaluate, theta_start, value0, g0, tol, max_iter, watch, check_every
        )
    # the cross-entropy only reads the float32 weights, so it is the same at the float32 model's theta
    known = "theta" in last and np.array_equal(last["theta"], theta)
    return SoftmaxModel(
        weights=theta[: d * K].reshape(d, K).astype(np.float32),
        bias=theta[d * K :].astype(np.float32),
        C=float(C),
        n_iter=n_iter,
        converged=converged,
        objective=float(value),
        n_eval=counter["evaluations"],
        cross_entropy=last["cross_entropy"] if known else None,
    )


def _scipy_lbfgs(evaluate, theta0, value0, g0, tol, max_iter, watch, check_every):
    """scipy's L-BFGS-B on W, b, as scikit-learn runs it. Returns ``(theta, value, n_iter, converged)``."""
    from scipy.optimize import minimize

    state = {"iter": 0, "stopped": False}

    def objective(theta):
        if state["iter"] == 0 and np.array_equal(theta, theta0):
            return value0, g0  # the start, evaluated already
        return evaluate(theta)

    def callback(intermediate_result):
        state["iter"] += 1
        if watch is not None and state["iter"] % check_every == 0 and watch(intermediate_result.x):
            state["stopped"] = True
            raise StopIteration

    res = minimize(
        objective,
        theta0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": int(max_iter),
            "gtol": float(tol),
            "ftol": 64 * np.finfo(float).eps,
            "maxls": MAX_LINE_SEARCH,
        },
    )
    return res.x, float(res.fun), int(res.nit), bool(res.success) and not state["stopped"]


def _lbfgs(evaluate, space, u, value, grad, *, tol, max_iter, watch, check_every, first=None, memory=LBFGS_MEMORY):
    """L-BFGS on the preconditioned variables u; ``evaluate(u) -> (value, gradient in W, b)``.

    The first step of a fit is the preconditioned gradient step itself (the inverse Hessian
    starts as the identity: the preconditioner's scale is trusted, where L-BFGS-B would start
    with a step of unit length and spend evaluations finding the scale); the step is 1 unless
    it fails the Armijo test, then halved-or-interpolated. Stops when every gradient component
    in W, b is at most ``tol`` (scikit-learn's test), when the decrease is below L-BFGS-B's
    ``ftol``, after ``max_iter`` iterations, or when ``watch(u)`` says so. ``first``: the first
    step to try instead (where it is a descent direction).
    Returns ``(u, value, n_iter, converged)``.
    """
    S: list[np.ndarray] = []
    Yd: list[np.ndarray] = []
    g = space.to_u_grad(grad)
    gamma = 1.0
    ftol = 64 * np.finfo(float).eps
    for it in range(1, int(max_iter) + 1):
        # the two-loop recursion: direction = -H g
        q = g.copy()
        alphas = []
        for s_, y_ in zip(reversed(S), reversed(Yd), strict=True):
            a = float(s_ @ q) / float(y_ @ s_)
            alphas.append(a)
            q -= a * y_
        q *= gamma
        for (s_, y_), a in zip(zip(S, Yd, strict=True), reversed(alphas), strict=True):
            q += (a - float(y_ @ q) / float(y_ @ s_)) * s_
        direction = -q
        given = first is not None and it == 1 and float(g @ first) < 0
        if given:
            direction = first
        slope = float(g @ direction)
        if not slope < 0:  # not a descent direction: restart from the preconditioned gradient
            S.clear()
            Yd.clear()
            direction, slope, gamma = -g, -float(g @ g), 1.0
        t = 1.0
        for _ in range(MAX_LINE_SEARCH):
            trial = u + t * direction
            new_value, new_grad = evaluate(trial)
            if new_value <= value + 1e-4 * t * slope:
                break
            # the minimiser of the quadratic through value, slope and new_value, kept within [0.1 t, 0.5 t]
            t = min(0.5 * t, max(0.1 * t, -slope * t * t / (2.0 * (new_value - value - slope * t))))
        else:
            return u, value, it - 1, False  # no decrease along a descent direction: float32 noise floor
        step = t * direction
        new_g = space.to_u_grad(new_grad)
        dy = new_g - g
        sy = float(step @ dy)
        # a given first step is no curvature sample of this fit: along the path it can be far from typical, and
        # its scale (gamma) would override the preconditioner's, which the first iterations trust
        if not given and sy > 1e-12 * float(dy @ dy):
            S.append(step)
            Yd.append(dy)
            if len(S) > memory:
                S.pop(0)
                Yd.pop(0)
            gamma = sy / float(dy @ dy)
        decrease = value - new_value
        u, value, g = trial, new_value, new_g
        if np.max(np.abs(new_grad)) <= tol or decrease <= ftol * max(abs(value), abs(new_value), 1.0):
            return u, value, it, True
        if watch is not None and it % check_every == 0 and watch(u):
            return u, value, it, False
    return u, value, int(max_iter), False
