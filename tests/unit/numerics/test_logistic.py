"""The softmax objective against a float64 oracle and its finite differences; the fit against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from nnkcli.numerics.logistic import fit_softmax, softmax_objective


def oracle_objective(theta, X, y, K, C):
    """0.5 ||W||² + C Σ CE, divided by C n: written from the formula, in float64, one row at a time."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    W, b = theta[: d * K].reshape(d, K), theta[d * K :]
    total = 0.0
    for i in range(n):
        z = X[i] @ W + b
        total += logsumexp(z) - z[y[i]]
    return (0.5 * np.sum(W * W) + C * total) / (C * n)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 12),
    d=st.integers(1, 4),
    K=st.integers(2, 4),
    C=st.floats(1e-2, 1e2),
)
def test_value_and_gradient_match_the_oracle_and_its_finite_differences(seed, n, d, K, C):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, K, n)
    theta = rng.normal(size=(d + 1) * K)
    value, grad = softmax_objective(theta, X, y, K, C)
    assert value == pytest.approx(oracle_objective(theta, X, y, K, C), rel=1e-5, abs=1e-6)
    h = 1e-5
    fd = np.array(
        [
            (oracle_objective(theta + h * e, X, y, K, C) - oracle_objective(theta - h * e, X, y, K, C)) / (2 * h)
            for e in np.eye(theta.size)
        ]
    )
    # float32 logits: the gradient is float32-accurate
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("C", [0.1, 30.0])
def test_a_fit_matches_scikit_learn_at_the_same_C(C):
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

    rng = np.random.default_rng(3)
    n, d, K = 600, 10, 5
    means = rng.normal(size=(K, d))
    y = rng.integers(0, K, n)
    X = (means[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    ours = fit_softmax(X, y, K, C)
    ref = LogisticRegression(C=C, max_iter=1000).fit(X, y)  # lbfgs, multinomial for K >= 3
    assert ours.converged
    # the same objective, the same minimiser: predictions agree, coefficients nearly so
    agree = np.mean(ours.scores(X).argmax(axis=1) == ref.predict(X))
    assert agree >= 0.995
    np.testing.assert_allclose(ours.weights.T, ref.coef_, atol=2e-3 * max(1.0, np.abs(ref.coef_).max()))
    np.testing.assert_allclose(ours.bias, ref.intercept_, atol=2e-3 * max(1.0, np.abs(ref.intercept_).max()))


def test_the_bias_is_not_penalised():
    # one class everywhere but a few rows: with a penalised bias the fit could not reach its frequency
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32) * 1e-3  # features carry (almost) nothing
    y = np.r_[np.zeros(180, int), np.ones(20, int)]
    model = fit_softmax(X, y, 2, 1e-6)
    p = np.exp(model.bias) / np.exp(model.bias).sum()
    assert p[1] == pytest.approx(0.1, abs=1e-3)  # the bias alone fits the class frequencies


def test_a_warm_start_reaches_the_same_model():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    cold = fit_softmax(X, y, 3, 2.0, tol=1e-6)
    warm = fit_softmax(X, y, 3, 2.0, theta0=fit_softmax(X, y, 3, 0.5).theta, tol=1e-6)
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-3)
    assert warm.n_iter < cold.n_iter


def _steep_features(seed, n=400, d=8, K=4):
    """Classes in a few strong directions plus weak ones, shifted off the origin: an ill-conditioned design."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    scale = np.geomspace(1.0, 1e-3, d)
    X = (rng.normal(size=(K, d))[y] + rng.normal(size=(n, d))) * scale + 0.5
    return X.astype(np.float32), y


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), C=st.floats(1e-2, 1e3))
def test_the_preconditioned_variables_are_an_exact_change_of_variables(seed, C):
    from nnkcli.numerics.logistic import FeatureCurvature, _Preconditioned

    X, y = _steep_features(seed, n=40, d=3, K=3)
    rng = np.random.default_rng(seed)
    theta0 = rng.normal(size=4 * 3)
    space = _Preconditioned(FeatureCurvature.of(X), X, theta0, 3, 1.0 / (C * 40))
    theta = rng.normal(size=4 * 3)
    u = space.to_u(theta)
    np.testing.assert_allclose(space.to_theta(u), theta, rtol=1e-9, atol=1e-9)
    # the gradient in the new variables is that of the oracle composed with the change (central differences)
    _, grad = softmax_objective(theta, X, y, 3, C)
    h = 1e-6 * max(1.0, np.abs(u).max())
    fd = np.array(
        [
            (
                oracle_objective(space.to_theta(u + h * e), X, y, 3, C)
                - oracle_objective(space.to_theta(u - h * e), X, y, 3, C)
            )
            / (2 * h)
            for e in np.eye(u.size)
        ]
    )
    np.testing.assert_allclose(space.to_u_grad(grad), fd, rtol=2e-3, atol=2e-4 * max(1.0, np.abs(fd).max()))


@pytest.mark.slow
@pytest.mark.parametrize("C", [0.1, 30.0])
def test_a_preconditioned_fit_reaches_scikit_learns_minimiser(C):
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

    X, y = _steep_features(4, n=300)
    ours = fit_softmax(X, y, 4, C, curvature=True, tol=1e-6)
    plain = fit_softmax(X, y, 4, C, tol=1e-6)
    ref = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(X, y)
    assert ours.converged
    # at C = 30 the objective is flat along the weak directions (weights far apart, values equal): compare values
    ref_value = oracle_objective(np.concatenate([ref.coef_.T.ravel(), ref.intercept_]), X, y, 4, C)
    assert oracle_objective(ours.theta, X, y, 4, C) <= ref_value + 1e-7
    assert np.mean(ours.scores(X).argmax(axis=1) == ref.predict(X)) >= 0.99
    assert ours.n_iter < plain.n_iter  # fewer iterations than plain L-BFGS on this ill-conditioned design


def test_a_monitor_stops_the_fit_at_its_check():
    X, y = _steep_features(5)
    seen = []

    def monitor(W, b):
        seen.append((W.shape, b.shape))
        return len(seen) == 2

    model = fit_softmax(X, y, 4, 1e3, monitor=monitor, check_every=3, curvature=True)
    assert model.n_iter == 6 and not model.converged
    assert seen == [((8, 4), (4,))] * 2


def oracle_cross_entropy(theta, X, y, K):
    """mean CE and its gradient, written from the formula in float64, one row at a time."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    W, b = theta[: d * K].reshape(d, K), theta[d * K :]
    value, gW, gb = 0.0, np.zeros((d, K)), np.zeros(K)
    for i in range(n):
        z = X[i] @ W + b
        p = np.exp(z - logsumexp(z))
        value += logsumexp(z) - z[y[i]]
        p[y[i]] -= 1.0
        gW += np.outer(X[i], p)
        gb += p
    return value / n, np.concatenate([gW.ravel(), gb]) / n


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), C=st.floats(1e-1, 1e2))
def test_a_model_keeps_the_cross_entropy_at_its_own_weights(seed, C):
    X, y = _steep_features(seed % 1000, n=120, d=4, K=3)
    model = fit_softmax(X, y, 3, C, curvature=True)
    assert model.cross_entropy is not None
    value, grad = model.cross_entropy
    ref_value, ref_grad = oracle_cross_entropy(model.theta, X, y, 3)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("step", [0.0, 1.0, 8.0])
def test_an_anchored_fit_saves_the_start_evaluation_and_reaches_the_same_model(step):
    """Anchored at the fit at C = 1, a fit at C = 3 skips its start's pass over the rows (step 0: the
    anchor is the start; 1: a fair extrapolation; 8: an overshoot, which the line search pulls back)."""
    X, y = _steep_features(7, n=500, d=6, K=4)
    curvature = __import__("nnkcli.numerics.logistic", fromlist=["FeatureCurvature"]).FeatureCurvature.of(X)
    before = fit_softmax(X, y, 4, 0.3, curvature=curvature, tol=1e-7)
    at_one = fit_softmax(X, y, 4, 1.0, theta0=before.theta, curvature=curvature, tol=1e-7)
    start = at_one.theta + step * (at_one.theta - before.theta)
    plain = fit_softmax(X, y, 4, 3.0, theta0=start, curvature=curvature, tol=1e-7)
    anchored = fit_softmax(X, y, 4, 3.0, theta0=start, curvature=curvature, tol=1e-7, anchor=at_one)
    assert plain.converged and anchored.converged
    # the same minimiser (compared by the oracle's objective and the predictions)
    ref = oracle_objective(plain.theta, X, y, 4, 3.0)
    assert oracle_objective(anchored.theta, X, y, 4, 3.0) == pytest.approx(ref, rel=1e-6)
    assert np.mean(anchored.scores(X).argmax(axis=1) == plain.scores(X).argmax(axis=1)) >= 0.998
    if step <= 1.0:
        assert anchored.n_eval < plain.n_eval


def test_an_anchor_of_another_shape_is_refused():
    X, y = _steep_features(2, n=60, d=3, K=3)
    other = fit_softmax(X[:, :2], y, 3, 1.0, curvature=True)
    with pytest.raises(ValueError, match="anchor"):
        fit_softmax(X, y, 3, 2.0, theta0=np.zeros(12), curvature=True, anchor=other)
