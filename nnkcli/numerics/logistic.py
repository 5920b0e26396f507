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

from dataclasses import dataclass

import numpy as np

#: scikit-learn's defaults for LogisticRegression(solver="lbfgs"): the gradient tolerance and the line search
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000
MAX_LINE_SEARCH = 50


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
    """

    weights: np.ndarray
    bias: np.ndarray
    C: float
    n_iter: int
    converged: bool
    objective: float

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
    n, d = X.shape
    K = int(n_classes)
    W64 = theta[: d * K].reshape(d, K)
    W = W64.astype(np.float32)
    b = theta[d * K :].astype(np.float32)
    # classes on the rows (K, n): the reductions over classes then run along whole rows of n values,
    # which numpy vectorises, where an (n, K) layout reduces K < 100 values per row, 5-10x slower
    ZT = W.T @ X.T  # float32 GEMM: the cost
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
    penalty = 1.0 / (C * n)
    grad_W = (ZT @ X).T.astype(np.float64)  # float32 GEMM
    grad_W *= scale
    grad_W += penalty * W64
    grad_b = ZT.sum(axis=1, dtype=np.float64) * scale
    value = loss * scale + 0.5 * penalty * float(np.dot(W64.ravel(), W64.ravel()))
    return value, np.concatenate([grad_W.ravel(), grad_b])


def fit_softmax(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    *,
    theta0: np.ndarray | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
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
    tol : float, the projected-gradient tolerance (scikit-learn's ``tol``, same scale)
    max_iter : int, the most L-BFGS iterations

    Returns
    -------
    SoftmaxModel
    """
    from scipy.optimize import minimize

    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n, d = X.shape
    K = int(n_classes)
    if not (C > 0 and np.isfinite(C)):
        raise ValueError(f"C must be a positive number, got {C!r}")
    if y.shape != (n,) or (n and (y.min() < 0 or y.max() >= K)):
        raise ValueError(f"y must be (n,) classes in 0..{K - 1}")
    x0 = np.zeros((d + 1) * K) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    res = minimize(
        softmax_objective,
        x0,
        args=(X, y, K, float(C)),
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": int(max_iter),
            "gtol": float(tol),
            "ftol": 64 * np.finfo(float).eps,
            "maxls": MAX_LINE_SEARCH,
        },
    )
    theta = res.x
    return SoftmaxModel(
        weights=theta[: d * K].reshape(d, K).astype(np.float32),
        bias=theta[d * K :].astype(np.float32),
        C=float(C),
        n_iter=int(res.nit),
        converged=bool(res.success),
        objective=float(res.fun),
    )
