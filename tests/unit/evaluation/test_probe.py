"""The linear probe's protocol: the held-out draw, the selection blind to the query split, scikit-learn's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import nnk_data
from nnkcli.evaluation.probe import holdout_split, probe

GRID = "1e-2:1e2:5"


def test_the_held_out_rows_are_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [40, 21, 5, 1])
    fit, held = holdout_split(labels, 0.1, seed=7)
    assert np.intersect1d(fit, held).size == 0 and np.union1d(fit, held).tolist() == list(range(labels.size))
    # round(0.1 * n_c) of each class, never the class's last row
    assert np.bincount(labels[held], minlength=4).tolist() == [4, 2, 1, 0]
    again, _ = holdout_split(labels, 0.1, seed=7)
    other, _ = holdout_split(labels, 0.1, seed=8)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)


def test_permuting_the_query_labels_leaves_the_selection_unchanged(tmp_path):
    xt, yt, xq, yq = nnk_data.two_splits(200, 80, 8, seed=5, noise=2.0)
    a = nnk_data.make_store(tmp_path / "a.h5", train=(xt, yt), query=(xq, yq))
    b = nnk_data.make_store(tmp_path / "b.h5", train=(xt, yt), query=(xq, np.random.default_rng(0).permutation(yq)))
    da, db = (probe(s, c_grid="1e-3:1e3:9", patience=0, threads=1).to_dict() for s in (a, b))
    assert da["chosen_c"] == db["chosen_c"]
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in da["selection"]["curve"]]
    assert strip == [{k: v for k, v in p.items() if k != "seconds"} for p in db["selection"]["curve"]]
    assert len(strip) == 9 and len({p["held_out_top1"] for p in strip}) > 1  # the curve really moves
    assert da["results"][0]["top1"] != db["results"][0]["top1"]  # ... and the query labels were read after


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [True, False])
def test_the_refit_matches_scikit_learn_at_the_chosen_C(tmp_path, normalize):
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    xt, yt, xq, yq = nnk_data.two_splits(500, 300, 10, seed=2, noise=2.2, n_classes=5)
    store = nnk_data.make_store(tmp_path / "s.h5", train=(xt, yt), query=(xq, yq), class_names=list("abcde"))
    doc = probe(store, c_grid=GRID, normalize=normalize, threads=1).to_dict()
    C = doc["chosen_c"]

    def prep(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x

    ref = LogisticRegression(C=C, max_iter=1000).fit(prep(xt), yt)
    top1 = 100 * ref.score(prep(xq), yq)
    proba = ref.predict_proba(prep(xq))
    top5 = 100 * np.mean((np.argsort(-proba, axis=1)[:, :5] == yq[:, None]).any(axis=1))
    assert abs(doc["results"][0]["top1"] - top1) <= 0.5
    assert abs(doc["results"][0]["top5"] - top5) <= 0.5
    lo, hi = doc["results"][0]["top1_ci"]
    assert lo < doc["results"][0]["top1"] < hi


@pytest.mark.slow
def test_the_predictions_file_is_compared_with_classify(tmp_path, store):
    from nnkcli.evaluation.classification import classify
    from nnkcli.evaluation.compare import compare
    from nnkcli.evaluation.predictions import PredictionFile

    result = probe(store, c_grid=GRID, threads=1, predictions_path=tmp_path / "probe.h5")
    classify(store, k=10, threads=1, predictions_path=tmp_path / "nnk.h5")
    with PredictionFile(tmp_path / "probe.h5") as f:
        assert f.methods == ("linear",) and f.k is None and f.n == 60
        labels, top, _ = f.read_block("linear", 0, f.n)
    assert np.array_equal(top[:, 0] == labels, result.hits)
    doc = compare(tmp_path / "probe.h5", tmp_path / "nnk.h5")
    assert doc["a"]["method"] == "linear" and doc["b"]["method"] == "nnk"
    assert doc["a"]["top1"] == result.results[0]["top1"]


def test_a_train_split_without_two_classes_is_refused(tmp_path):
    from nnkcli.errors import InputError

    xt, _ = nnk_data.mixture(50, 12, 0)
    store = nnk_data.make_store(tmp_path / "s.h5", train=(xt, np.zeros(50, int)))
    with pytest.raises(InputError, match="needs two"):
        probe(store, c_grid=GRID)


def _steep_store(path, seed):
    """Six classes in 16 dimensions of steeply falling scale, off the origin: fits that need many iterations."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1.0, 1e-2, 16)
    means = rng.normal(size=(6, 16))
    yt, yq = rng.integers(0, 6, 800), rng.integers(0, 6, 50)
    xt = ((means[yt] + 1.5 * rng.normal(size=(800, 16))) * scale + 1).astype(np.float32)
    xq = ((means[yq] + 1.5 * rng.normal(size=(50, 16))) * scale + 1).astype(np.float32)
    return nnk_data.make_store(path, train=(xt, yt), query=(xq, yq), class_names=list("abcdef")), xt, yt


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_fits_stopped_on_the_held_out_top1_choose_the_C_of_converged_fits(tmp_path, seed):
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    store, xt, yt = _steep_store(tmp_path / "s.h5", seed)
    grid = "1e-2:1e4:13"
    early = probe(store, c_grid=grid, patience=0, normalize=False, threads=1).to_dict()
    full = probe(store, c_grid=grid, patience=0, normalize=False, threads=1, fit_patience=0).to_dict()
    curve = early["selection"]["curve"]
    assert any(p["stopped_on_held_out"] for p in curve)  # the early stop really ran
    assert not any(p["stopped_on_held_out"] for p in full["selection"]["curve"])
    assert early["chosen_c"] == full["chosen_c"]
    # the oracle: scikit-learn's Newton solver, to a tight tolerance, on the same rows; each held-out top-1 within a row
    fit, held = holdout_split(yt, 0.1, 0)
    x64 = xt.astype(np.float64)
    for p in curve:
        ref = LogisticRegression(C=p["c"], solver="newton-cholesky", max_iter=500, tol=1e-8).fit(x64[fit], yt[fit])
        expected = 100 * ref.score(x64[held], yt[held])
        assert abs(p["held_out_top1"] - expected) <= 100 / held.size + 1e-3  # the curve is rounded to 4 decimals
