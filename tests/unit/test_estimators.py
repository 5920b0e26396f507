"""NNKClassifier / WeightedKNNClassifier: scikit-learn's own checks, the CLI's predictions,
brute-force oracles for neighbors, k-NN votes, NNK weights (both solvers) and unlabelled rows."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.estimators import NNKClassifier, WeightedKNNClassifier

sklearn = pytest.importorskip("sklearn")


@pytest.mark.parametrize("make", [NNKClassifier, WeightedKNNClassifier])
def test_check_estimator(make):
    """Every check of scikit-learn's suite on the defaults, none expected to fail (-1 is a class)."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(make(), on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results if r["status"] == "failed"]
    assert not failed
    assert not [r for r in results if r["status"] == "xfail"]
    assert sum(r["status"] == "passed" for r in results) > 40


def _brute_neighbors(train, queries, k):
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ t.astype(np.float64).T
    ids = np.array([sorted(range(len(t)), key=lambda j: (-s[j], j))[:k] for s in sims])
    return ids, np.take_along_axis(sims, ids, 1), t


def _data(seed, n=60, d=5, n_classes=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * 2
    y = rng.integers(0, n_classes, size=n)
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    Xq = (centers[rng.integers(0, n_classes, size=15)] + rng.normal(size=(15, d))).astype(np.float32)
    return X, y, Xq


def _naive_votes(y_neighbors, sims, temperature, classes):
    """DINO's weighted vote of one query, written out: exp(s / T) per neighbor to its class (if listed)."""
    votes = np.zeros(len(classes))
    for label, s in zip(y_neighbors, sims, strict=True):
        if label in classes:
            votes[classes.index(label)] += np.exp(s / temperature)
    return votes


def _nnls_weights(N, q):
    """NNK weights of one query by scipy's NNLS: min 1/2 th'G th - g'th, th >= 0, cosine kernel (1 + cos) / 2."""
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls

    k = len(N)
    G = (1 + N @ N.T) / 2 + 1e-12 * np.eye(k)
    g = (1 + N @ q) / 2
    # min 1/2 th'G th - g'th, th >= 0  <=>  min |L' th - L^-1 g|^2 with G = L L'
    L = cholesky(G, lower=True)
    return nnls(L.T, solve_triangular(L, g, lower=True))[0]


def _naive_pruning(N, q, tol=1e-10):
    """The NNK paper's pruning solver written out in float64: solve on the kept neighbors, drop those
    whose weight is <= tol, until no weight is below -tol (no duplicates of the query here)."""
    G, g = (1 + N @ N.T) / 2, (1 + N @ q) / 2
    kept = g > tol
    while True:
        theta = np.zeros(len(g))
        theta[kept] = np.linalg.solve(G[np.ix_(kept, kept)], g[kept])
        below = theta < tol
        kept &= theta > tol
        if np.abs(theta[below]).max(initial=0.0) <= tol:
            return np.where(theta < tol, 0.0, theta)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), temperature=st.floats(0.02, 1.0))
def test_weighted_knn_matches_a_naive_vote(seed, k, temperature):
    X, y, Xq = _data(seed)
    clf = WeightedKNNClassifier(n_neighbors=k, temperature=temperature).fit(X, y)
    ids, sims, _ = _brute_neighbors(X, Xq, k)
    proba = clf.predict_proba(Xq)
    for b in range(len(Xq)):
        votes = np.zeros(3)
        for j in range(k):
            votes[y[ids[b, j]]] += np.exp(sims[b, j] / temperature)
        np.testing.assert_allclose(proba[b], votes / votes.sum(), rtol=1e-6)
    dist, ind = clf.kneighbors(Xq)
    np.testing.assert_array_equal(ind, ids)
    np.testing.assert_allclose(dist, 1 - sims, atol=1e-6)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 12))
def test_nnk_weights_match_scipy_nnls(seed, k):
    X, y, Xq = _data(seed)
    clf = NNKClassifier(n_neighbors=k).fit(X, y)
    ids, theta = clf.nnk_weights(Xq)
    bids, _, t = _brute_neighbors(X, Xq, k)
    np.testing.assert_array_equal(ids, bids)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    for b in range(len(Xq)):
        ref = _nnls_weights(t[bids[b]].astype(np.float64), q[b].astype(np.float64))
        np.testing.assert_allclose(theta[b], ref, atol=1e-5)
        scores = np.bincount(y[bids[b]], weights=ref, minlength=3) / ref.sum()
        np.testing.assert_allclose(clf.predict_proba(Xq[b : b + 1])[0], scores, atol=1e-5)


def test_string_labels_torch_input_and_pickle():
    torch = pytest.importorskip("torch")
    X, y, Xq = _data(3)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = NNKClassifier(n_neighbors=8).fit(torch.from_numpy(X), names)
    assert clf.classes_.tolist() == ["cat", "dog", "emu"]
    pred = clf.predict(torch.from_numpy(Xq))
    assert set(pred) <= set(clf.classes_)
    same = NNKClassifier(n_neighbors=8).fit(X, names).predict(Xq)
    np.testing.assert_array_equal(pred, same)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict(Xq), pred)
    assert clf.score(Xq, pred) == 1.0


def test_kneighbors_without_x_leaves_each_row_out():
    X, y, _ = _data(5, n=30)
    clf = WeightedKNNClassifier(n_neighbors=4).fit(X, y)
    ind = clf.kneighbors(return_distance=False)
    ids, _, _ = _brute_neighbors(X, X, 5)
    for i in range(len(X)):
        assert i not in ind[i]
        np.testing.assert_array_equal(ind[i], [j for j in ids[i] if j != i][:4])
    with pytest.raises(ValueError, match="n_neighbors must be an integer in 1..29"):
        clf.kneighbors(n_neighbors=30)


def test_n_neighbors_capped_at_training_rows():
    X, y, Xq = _data(1, n=7)
    clf = NNKClassifier().fit(X, y)
    assert clf.n_neighbors_ == 7 and clf.nnk_weights(Xq)[1].shape == (15, 7)


@pytest.mark.parametrize(
    "make, bad, name",
    [
        (NNKClassifier, dict(n_neighbors=0), "n_neighbors"),
        (NNKClassifier, dict(kernel="rbf"), "kernel"),
        (NNKClassifier, dict(solver="cvx"), "solver"),
        (NNKClassifier, dict(tol=0), "tol"),
        (NNKClassifier, dict(tol="1e-3"), "tol"),
        (NNKClassifier, dict(solver="pruning", kernel="gaussian"), "solver"),
        (NNKClassifier, dict(unlabelled=[-1, 0]), "unlabelled"),
        (WeightedKNNClassifier, dict(n_neighbors=2.5), "n_neighbors"),
        (WeightedKNNClassifier, dict(temperature=0), "temperature"),
        (WeightedKNNClassifier, dict(temperature=float("nan")), "temperature"),
        (WeightedKNNClassifier, dict(temperature=True), "temperature"),
        (WeightedKNNClassifier, dict(weighting="softmax"), "weighting"),
    ],
)
def test_bad_parameters_are_value_errors_naming_the_parameter(make, bad, name):
    with pytest.raises(ValueError) as info:
        make(**bad).fit(np.eye(3), [0, 1, 2])
    message, hint = str(info.value), getattr(info.value, "hint", None) or ""
    assert message.startswith(name) and repr(bad[name]) in message
    assert "--" not in message + hint  # a Python call is told its parameter, never a CLI option


def test_every_solver_of_the_core_is_accepted():
    from nnkcli.evaluation.protocols import SOLVERS

    X, y, Xq = _data(8)
    for solver in SOLVERS:
        clf = NNKClassifier(n_neighbors=5, solver=solver).fit(X, y)
        assert set(clf.predict(Xq)) <= set(clf.classes_)


@pytest.mark.parametrize("seed", range(4))
def test_pruning_solver_matches_the_papers_algorithm(seed):
    X, y, Xq = _data(seed, d=16)
    k = 8
    clf = NNKClassifier(n_neighbors=k, solver="pruning").fit(X, y)
    ids, theta = clf.nnk_weights(Xq)
    bids, _, t = _brute_neighbors(X, Xq, k)
    np.testing.assert_array_equal(ids, bids)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    proba = clf.predict_proba(Xq)
    for b in range(len(Xq)):
        ref = _naive_pruning(t[bids[b]].astype(np.float64), q[b].astype(np.float64))
        np.testing.assert_allclose(theta[b], ref, atol=1e-4)  # the solver works in float32, as the paper's
        np.testing.assert_allclose(proba[b], np.bincount(y[bids[b]], weights=ref, minlength=3) / ref.sum(), atol=1e-4)


@pytest.mark.parametrize("make", [NNKClassifier, WeightedKNNClassifier])
def test_minus_one_is_an_ordinary_class_by_default(make):
    X, y, Xq = _data(11)
    clf = make(n_neighbors=7).fit(X, y - 1)  # classes -1, 0, 1
    assert clf.classes_.tolist() == [-1, 0, 1]
    # the same classes under other names: the same scores, the same predictions
    other = make(n_neighbors=7).fit(X, y + 5)
    np.testing.assert_array_equal(clf.predict_proba(Xq), other.predict_proba(Xq))
    pred = clf.predict(Xq)
    np.testing.assert_array_equal(pred, other.predict(Xq) - 6)
    assert (pred == -1).any()
    # against the naive vote, -1 a class like the others
    if make is WeightedKNNClassifier:
        ids, sims, _ = _brute_neighbors(X, Xq, 7)
        for b in range(len(Xq)):
            votes = _naive_votes(y[ids[b]] - 1, sims[b], 0.07, [-1, 0, 1])
            np.testing.assert_allclose(clf.predict_proba(Xq[b : b + 1])[0], votes / votes.sum(), rtol=1e-6)


def _mark_unlabelled(y, seed, marker=-1, fraction=0.4):
    rng = np.random.default_rng(seed + 1)
    return np.where(rng.random(len(y)) < fraction, marker, y)


def _nearest_labelled_class(X, y, query):
    """Class of the most similar row of X whose label is >= 0 (a plain loop)."""
    t = X / np.linalg.norm(X, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    best = max((j for j in range(len(X)) if y[j] >= 0), key=lambda j: (float(t[j] @ q), -j))
    return y[best]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_weighted_knn_unlabelled_rows_are_neighbors_that_never_vote(seed, k):
    X, y, Xq = _data(seed)
    y = _mark_unlabelled(y, seed)
    clf = WeightedKNNClassifier(n_neighbors=k, unlabelled=-1).fit(X, y)
    classes = sorted(set(y.tolist()) - {-1})
    assert clf.classes_.tolist() == classes
    ids, sims, _ = _brute_neighbors(X, Xq, k)
    np.testing.assert_array_equal(clf.kneighbors(Xq, return_distance=False), ids)  # unlabelled rows included
    proba, pred = clf.predict_proba(Xq), clf.predict(Xq)
    for b in range(len(Xq)):
        votes = _naive_votes(y[ids[b]], sims[b], 0.07, classes)
        if votes.sum() > 0:
            np.testing.assert_allclose(proba[b], votes / votes.sum(), rtol=1e-6)
            assert votes[classes.index(pred[b])] == votes.max()
        else:  # every neighbor unlabelled: the nearest labelled row's class, with certainty
            assert pred[b] == _nearest_labelled_class(X, y, Xq[b])
            np.testing.assert_array_equal(proba[b], np.eye(len(classes))[classes.index(pred[b])])


def test_all_neighbors_unlabelled_falls_back_to_the_nearest_labelled_row():
    X, y, Xq = _data(21)
    y = _mark_unlabelled(y, 21, fraction=0.8)
    for clf in (WeightedKNNClassifier(n_neighbors=2, unlabelled=-1), NNKClassifier(n_neighbors=2, unlabelled=-1)):
        pred = clf.fit(X, y).predict(Xq)
        ids = clf.kneighbors(Xq, return_distance=False)
        lonely = [b for b in range(len(Xq)) if (y[ids[b]] == -1).all()]
        assert lonely  # the case is exercised
        for b in lonely:
            assert pred[b] == _nearest_labelled_class(X, y, Xq[b])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 12))
def test_nnk_unlabelled_rows_take_weight_but_never_vote(seed, k):
    X, y, Xq = _data(seed)
    y = _mark_unlabelled(y, seed)
    clf = NNKClassifier(n_neighbors=k, unlabelled=-1).fit(X, y)
    classes = clf.classes_.tolist()
    assert -1 not in classes
    ids, theta = clf.nnk_weights(Xq)
    bids, _, t = _brute_neighbors(X, Xq, k)
    np.testing.assert_array_equal(ids, bids)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    proba = clf.predict_proba(Xq)
    for b in range(len(Xq)):
        ref = _nnls_weights(t[bids[b]].astype(np.float64), q[b].astype(np.float64))
        np.testing.assert_allclose(theta[b], ref, atol=1e-5)  # the unlabelled neighbors are in the solve
        mass = np.zeros(len(classes))
        for label, weight in zip(y[bids[b]], ref, strict=True):
            if label != -1:
                mass[classes.index(label)] += weight
        if mass.sum() > 0.1:  # well away from the fallback
            np.testing.assert_allclose(proba[b], mass / mass.sum(), atol=1e-3)


def test_unlabelled_may_be_any_label_value():
    X, y, Xq = _data(4)
    names = np.array(["cat", "dog", "emu"])[y]
    names[::3] = "?"
    clf = WeightedKNNClassifier(n_neighbors=6, unlabelled="?").fit(X, names)
    assert clf.classes_.tolist() == ["cat", "dog", "emu"]
    ref = WeightedKNNClassifier(n_neighbors=6, unlabelled=-1).fit(X, np.where(names == "?", -1, y))
    np.testing.assert_array_equal(clf.predict(Xq), np.array(["cat", "dog", "emu"])[ref.predict(Xq)])
    np.testing.assert_array_equal(clf.predict_proba(Xq), ref.predict_proba(Xq))
    # a marker of another type than the labels marks nothing
    assert WeightedKNNClassifier(unlabelled=-1).fit(X, names).classes_.tolist() == ["?", "cat", "dog", "emu"]
    with pytest.raises(ValueError, match="every row of y has the label unlabelled='\\?'"):
        NNKClassifier(unlabelled="?").fit(X[:3], ["?"] * 3)


def test_score_is_a_fraction():
    X, y, Xq = _data(2)
    clf = WeightedKNNClassifier(n_neighbors=5).fit(X, y)
    truth = clf.predict(Xq)
    truth[::2] = (truth[::2] + 1) % 3  # 8 of the 15 wrong
    assert clf.score(Xq, truth) == pytest.approx(7 / 15)


def test_predictions_equal_the_cli(sample_store, tmp_path, runner):
    import h5py

    from nnkcli.cli import cli
    from nnkcli.storage.store import FeatureStore

    with FeatureStore(sample_store) as store:
        train, val = store.split("train"), store.split("val")
        Xt, yt, Xq = train.read(), np.asarray(train.labels), val.read()
        names = np.array(store.classes)
    for method, clf in (("nnk", NNKClassifier(n_neighbors=20)), ("knn", WeightedKNNClassifier(n_neighbors=20))):
        out = tmp_path / f"{method}.h5"
        result = runner.invoke(
            cli, ["classify", str(sample_store), "--k", "20", "--method", method, "--out", str(out), "-q"]
        )
        assert result.exit_code == 0, result.output
        with h5py.File(out, "r") as f:
            cli_top1 = f[f"{method}/top5"][:, 0]
            cli_neighbors = f["neighbors"][:]
            cli_weights = f["nnk/weights"][:] if method == "nnk" else None
        assert (cli_top1 >= 0).all()
        pred = clf.fit(Xt, names[yt]).predict(Xq)
        np.testing.assert_array_equal(pred, names[cli_top1])
        np.testing.assert_array_equal(clf.kneighbors(Xq, return_distance=False), cli_neighbors)
        if method == "nnk":
            ids, theta = clf.nnk_weights(Xq)
            np.testing.assert_array_equal(ids, cli_neighbors)
            np.testing.assert_allclose(theta.astype(np.float32), cli_weights)


@pytest.mark.slow
def test_importable_without_sklearn_click_rich_torch():
    code = """
import sys
for name in ("sklearn", "click", "rich", "torch"):
    sys.modules[name] = None  # any import of them raises ImportError
import numpy as np
from nnkcli import NNKClassifier, WeightedKNNClassifier
from nnkcli.estimators import HAVE_SKLEARN, NotFittedError
assert not HAVE_SKLEARN
X = np.array([[1.0, 0.1], [0.9, 0.2], [0.1, 1.0], [0.2, 0.9]])
try:
    NNKClassifier().predict(X)
    raise SystemExit("predict before fit must fail")
except NotFittedError:
    pass
for clf in (NNKClassifier(n_neighbors=2), WeightedKNNClassifier(n_neighbors=2)):
    clf.set_params(n_neighbors=3)
    assert clf.get_params()["n_neighbors"] == 3
    assert clf.fit(X, [-1, -1, 1, 1]).predict([[1.0, 0.0], [0.0, 1.0]]).tolist() == [-1, 1]
    clf.set_params(unlabelled=-1)
    assert clf.fit(X, [-1, 0, 1, 1]).classes_.tolist() == [0, 1]
    clf.set_params(unlabelled=None)
    clf.fit(X, ["a", "a", "b", "b"])
    assert clf.predict([[1.0, 0.0], [0.0, 1.0]]).tolist() == ["a", "b"]
    assert clf.score([[1.0, 0.0]], ["a"]) == 1.0
    try:
        clf.predict([[1.0, 0.0, 0.0]])
        raise SystemExit("wrong width must fail")
    except ValueError as exc:
        assert "X has 3 features, but" in str(exc)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
