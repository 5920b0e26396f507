"""NNKClassifier / WeightedKNNClassifier: scikit-learn's own checks, the CLI's predictions,
brute-force oracles for neighbors, k-NN votes and NNK weights."""

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

from nnkcli.estimators import EstimatorInputError, NNKClassifier, WeightedKNNClassifier

sklearn = pytest.importorskip("sklearn")

UNLABELLED_REASON = "labels [-1, 1]: -1 marks unlabelled rows by default (unlabelled=None accepts it)"


@pytest.mark.slow
@pytest.mark.parametrize("make", [NNKClassifier, WeightedKNNClassifier])
def test_check_estimator(make):
    from sklearn.utils.estimator_checks import check_classifiers_classes, check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the default instance: every check but the one that uses -1 as a class
        check_estimator(make(), expected_failed_checks={"check_classifiers_classes": UNLABELLED_REASON})
        # and that check too, once -1 is an ordinary class
        check_classifiers_classes(make.__name__, make(unlabelled=None))


def test_default_refuses_minus_one_with_a_clear_error():
    X = np.eye(4) + 0.1
    with pytest.raises(EstimatorInputError, match=r"y has 1 unlabelled rows \(label -1; first: row 2\)") as info:
        NNKClassifier(n_neighbors=2).fit(X, [0, 1, -1, 1])
    assert "unlabelled=None" in info.value.hint
    assert isinstance(info.value, ValueError)
    NNKClassifier(n_neighbors=2, unlabelled=None).fit(X, [0, 1, -1, 1])  # a real class then


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


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 12))
def test_nnk_weights_match_scipy_nnls(seed, k):
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls

    X, y, Xq = _data(seed)
    clf = NNKClassifier(n_neighbors=k).fit(X, y)
    ids, theta = clf.nnk_weights(Xq)
    bids, _, t = _brute_neighbors(X, Xq, k)
    np.testing.assert_array_equal(ids, bids)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    for b in range(len(Xq)):
        N = t[bids[b]].astype(np.float64)
        G = (1 + N @ N.T) / 2 + 1e-12 * np.eye(k)
        g = (1 + N @ q[b].astype(np.float64)) / 2
        # min 1/2 th'G th - g'th, th >= 0  <=>  min |L' th - L^-1 g|^2 with G = L L'
        L = cholesky(G, lower=True)
        ref, _ = nnls(L.T, solve_triangular(L, g, lower=True))
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


@pytest.mark.parametrize("bad", [dict(n_neighbors=0), dict(kernel="rbf"), dict(solver="cvx"), dict(tol=0)])
def test_bad_parameters_are_value_errors(bad):
    with pytest.raises(ValueError):
        NNKClassifier(**bad).fit(np.eye(3), [0, 1, 2])


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
        result = runner.invoke(cli, ["classify", str(sample_store), "--k", "20", "--method", method,
                                     "--out", str(out), "-q"])
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
