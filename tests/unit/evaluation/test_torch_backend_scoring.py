"""Scoring on the torch device (nnkcli.evaluation.torch_backend, ``--backend torch --device cpu``).

Oracles: the numpy scorers of nnkcli.numerics.scores (for the voting rules, which are
tested against DINO's formula written out in tests/unit/numerics/test_scores.py), the faiss
path of the same run, and nnls-solved NNK weights (tests/unit/evaluation/test_torch_solver.py).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.evaluation import torch_backend as tb  # noqa: E402
from nnkcli.evaluation.classification import classify  # noqa: E402
from nnkcli.evaluation.options import ScoringOptions  # noqa: E402
from nnkcli.evaluation.scoring import score_chunk  # noqa: E402
from nnkcli.evaluation.sweeps import sweep  # noqa: E402
from nnkcli.numerics import scores as np_scores  # noqa: E402
from nnkcli.storage.store import write_split  # noqa: E402

C = 7


def voting_case(seed, B=40, K=30, C=C):
    rng = np.random.default_rng(seed)
    sims = np.sort(rng.uniform(-0.3, 1.0, (B, K)), axis=1)[:, ::-1].copy()
    labels = rng.integers(-1, C, (B, K))
    return sims, labels


@pytest.mark.parametrize("weighting", ["exp", "similarity", "uniform"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("rule", ["strict", "inclusive"])
def test_knn_voting_equals_numpy(weighting, temperature, rule):
    sims, labels = voting_case(1)
    k_values = [1, 3, 10, 30]
    dev = tb.knn_scores(
        torch.from_numpy(sims), torch.from_numpy(labels), C, k_values, weighting=weighting, temperature=temperature
    )
    for k, scores in zip(k_values, dev):
        ref = np_scores.knn_scores(sims[:, :k], labels[:, :k], C, weighting=weighting, temperature=temperature)
        if weighting == "exp":  # torch's and numpy's exp may differ in the last bit
            np.testing.assert_allclose(scores.numpy(), ref, rtol=1e-14, atol=0)
        else:  # the same float64 additions in the same order
            np.testing.assert_array_equal(scores.numpy(), ref)
        for top_k in (1, 5, C + 2):  # k > C pads with -1
            np.testing.assert_array_equal(
                tb.topk_classes(torch.from_numpy(ref), top_k, rule=rule).numpy(),
                np_scores.topk_classes(ref, top_k, rule=rule),
            )


def test_topk_ties_go_to_the_lower_class_and_strict_drops_zero_scores():
    scores = np.array([[0.0, 2.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, 3.0, 0.0, 3.0, 3.0]])
    for rule in ("strict", "inclusive"):
        np.testing.assert_array_equal(
            tb.topk_classes(torch.from_numpy(scores), 5, rule=rule).numpy(),
            np_scores.topk_classes(scores, 5, rule=rule),
        )
    assert tb.topk_classes(torch.from_numpy(scores), 5).numpy()[0].tolist() == [1, 2, 4, -1, -1]


def test_nnk_scores_equal_numpy():
    rng = np.random.default_rng(2)
    theta = np.where(rng.random((50, 20)) < 0.3, rng.random((50, 20)), 0.0)
    theta[3] = 0.0  # no weight at all: all-zero scores
    labels = rng.integers(-1, C, (50, 20))
    dev = tb.nnk_scores(torch.from_numpy(theta), torch.from_numpy(labels), C).numpy()
    ref = np_scores.nnk_scores(theta, labels, C)
    np.testing.assert_allclose(dev, ref, rtol=1e-14, atol=0)
    assert not dev[3].any()
    np.testing.assert_array_equal(tb.topk_classes(torch.from_numpy(dev), 5).numpy(), np_scores.topk_classes(ref, 5))


def test_bad_inputs_are_refused_as_in_numpy():
    sims, labels = voting_case(3)
    s, y = torch.from_numpy(sims), torch.from_numpy(labels)
    with pytest.raises(InputError, match="exp\\(s/T\\) overflows"):
        tb.knn_scores(s, y, C, [5], temperature=1e-4)
    with pytest.raises(InputError, match="temperature must be positive"):
        tb.knn_scores(s, y, C, [5], temperature=0.0)
    with pytest.raises(InputError, match="unknown weighting"):
        tb.knn_scores(s, y, C, [5], weighting="nope")
    with pytest.raises(InputError, match="NaN"):
        tb.topk_classes(torch.tensor([[np.nan, 1.0]]), 1)
    with pytest.raises(InputError, match="unknown top-5 rule"):
        tb.topk_classes(torch.tensor([[0.0, 1.0]]), 1, rule="loose")


class _Ev:
    """What score_chunk reads from an evaluation."""

    def __init__(self, train_labels, n_classes):
        self.train_labels, self.n_classes = train_labels, n_classes
        self.searcher = self

    def labels_on_device(self, labels):
        return torch.from_numpy(labels)


@pytest.mark.parametrize("methods", [("nnk", "knn"), ("knn",)])
def test_device_chunk_equals_the_numpy_chunk_with_missing_neighbors(methods):
    """score_chunk on device neighbors against score_chunk on the same neighbors as numpy arrays."""
    rng = np.random.default_rng(4)
    B, K, d, n = 30, 16, 12, 500
    q = np.abs(rng.standard_normal((B, d))) + 1
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    train_labels = rng.integers(-1, C, n)
    ids = np.stack([rng.choice(n, K, replace=False) for _ in range(B)])
    X = np.abs(rng.standard_normal((B, K, d))) + 1
    X = (X / np.linalg.norm(X, axis=2, keepdims=True)).astype(np.float32)
    sims = np.einsum("bkd,bd->bk", X, q, dtype=np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")
    ids, sims = np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
    X = np.take_along_axis(X, order[:, :, None], 1)
    missing = np.zeros((B, K), dtype=bool)
    missing[:4, -3:] = True  # an approximate index that returned fewer
    ids[missing], sims[missing] = -1, -np.inf
    opts = ScoringOptions(k_values=(4, 9, 16), methods=methods, temperature_grid=(0.07, 0.2))
    ev = _Ev(train_labels, C)
    t_np = {"search_s": 0.0, "rerank_s": 0.0, "knn_s": 0.0, "nnk_s": 0.0, "nnk_fallbacks": 0}
    t_dev = dict(t_np)
    ref = score_chunk(ev, q, 0, np.zeros(B, np.int64), opts, t_np, found=(ids, sims, X, missing))
    found = tb.DeviceNeighbors(*(torch.from_numpy(a) for a in (ids, sims, X, missing)))
    got = score_chunk(ev, q, 0, np.zeros(B, np.int64), opts, t_dev, found=found)
    assert list(got.by_method_k) == list(ref.by_method_k)
    np.testing.assert_array_equal(got.ids, ref.ids)
    for key, mc in ref.by_method_k.items():
        other = got.by_method_k[key]
        np.testing.assert_array_equal(other.top, mc.top)
        # kNN: the same sums but torch's exp; NNK: weights polished by torch (to 1e-12, below)
        np.testing.assert_allclose(other.scores, mc.scores, rtol=1e-13, atol=1e-12 if key[0] == "nnk" else 1e-15)
        if key[0] == "nnk":
            np.testing.assert_allclose(other.theta, mc.theta, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(other.support, mc.support)
            assert not other.theta[missing[:, : key[1]]].any()


def _tie_free_store(path, n=600, m=120, d=20, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, d)) * 1.2
    yt, yq = rng.integers(0, C, n), rng.integers(0, C, m)
    xt = (means[yt] + rng.normal(size=(n, d))).astype(np.float32)
    xq = (means[yq] + rng.normal(size=(m, d))).astype(np.float32)
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    return path


@pytest.fixture(scope="module")
def tie_free(tmp_path_factory):
    return _tie_free_store(tmp_path_factory.mktemp("tf") / "s.h5")


def _predictions(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f if isinstance(f[name], h5py.Dataset)} | {
            f"{g}/{name}": f[g][name][()]
            for g in f
            if isinstance(f[g], h5py.Group)
            for name in f[g]
            if isinstance(f[g][name], h5py.Dataset)
        }


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"exclude_self": True, "query_split": "train"},
        {"weighting": "similarity", "top5_rule": "inclusive"},
        {"weighting": "uniform"},
    ],
)
def test_classify_torch_cpu_equals_faiss_exactly(tie_free, tmp_path, settings):
    a = classify(tie_free, k=15, predictions_path=tmp_path / "a.h5", **settings)
    b = classify(tie_free, k=15, predictions_path=tmp_path / "b.h5", backend="torch", device="cpu", **settings)
    assert b["index"]["backend"] == "torch"
    assert a["results"] == b["results"]  # accuracies, intervals, support statistics
    pa, pb = _predictions(tmp_path / "a.h5"), _predictions(tmp_path / "b.h5")
    assert pa.keys() == pb.keys()
    for name in pa:
        if "top" in name or "ids" in name or "neighbors" in name or pa[name].dtype.kind in "iub":
            np.testing.assert_array_equal(pb[name], pa[name], err_msg=name)  # per-query predictions
        else:
            np.testing.assert_allclose(pb[name], pa[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_sweep_torch_cpu_equals_faiss_exactly(tie_free):
    a = sweep(tie_free, k_values=[1, 5, 12, 40], temperature_grid=(0.07, 0.3)).to_dict()
    b = sweep(tie_free, k_values=[1, 5, 12, 40], temperature_grid=(0.07, 0.3), backend="torch", device="cpu").to_dict()
    assert a["results"] == b["results"]
    assert a["best"] == b["best"]
    assert b["timing"]["nnk_fallbacks"] >= 0


def test_torch_results_do_not_depend_on_chunk_size(tie_free, tmp_path):
    docs = []
    for i, chunk in enumerate((1, 7, 1000)):
        docs.append(
            classify(
                tie_free, k=20, chunk_size=chunk, backend="torch", device="cpu", predictions_path=tmp_path / f"{i}.h5"
            )
        )
    files = [_predictions(tmp_path / f"{i}.h5") for i in range(3)]
    for doc, f in zip(docs[1:], files[1:]):
        assert doc["results"] == docs[0]["results"]
        for name in files[0]:
            np.testing.assert_array_equal(f[name], files[0][name], err_msg=name)  # bit for bit
    assert [d["timing"]["chunk_size"] for d in docs] == [1, 7, 1000]


def test_gaussian_kernel_and_pruning_solver_are_scored_by_numpy(tie_free):
    assert not tb.device_scoring(ScoringOptions(kernel="gaussian"))
    assert not tb.device_scoring(ScoringOptions(solver="pruning"))
    assert tb.device_scoring(ScoringOptions(kernel="gaussian", methods=("knn",)))
    for settings in ({"kernel": "gaussian"}, {"solver": "pruning"}):
        a = classify(tie_free, k=10, **settings)
        b = classify(tie_free, k=10, backend="torch", device="cpu", **settings)
        assert a["results"] == b["results"]


@pytest.mark.slow
def test_sample_store_sweep_torch_cpu_within_005_points(sample_store):
    a = sweep(sample_store, k_values=[10, 50, 100]).to_dict()
    b = sweep(sample_store, k_values=[10, 50, 100], backend="torch", device="cpu").to_dict()
    for ra, rb in zip(a["results"], b["results"]):
        assert (ra["method"], ra["k"]) == (rb["method"], rb["k"])
        assert abs(ra["top1"] - rb["top1"]) <= 0.05 and abs(ra["top5"] - rb["top5"]) <= 0.05


def test_torch_float64_results_are_bit_identical_across_chunk_sizes(tie_free):
    """Below the float32 files: the chunks' float64 similarities, class scores and NNK weights."""
    from nnkcli.evaluation.options import DataOptions
    from nnkcli.evaluation.setup import open_evaluation
    from nnkcli.evaluation.streaming import evaluate_chunks

    def collect(chunk):
        opts = ScoringOptions(
            k_values=(5, 20), backend="torch", device="cpu", chunk_size=chunk, temperature_grid=(0.07, 0.5)
        )
        got = []
        with open_evaluation(tie_free, opts, DataOptions()) as ev:
            evaluate_chunks(ev, opts, on_chunk=got.append)
        got.sort(key=lambda c: c.start)
        arrays = {"sims": np.concatenate([c.sims for c in got])}
        for key in got[0].by_method_k:
            for field in ("scores", "theta", "top"):
                if getattr(got[0].by_method_k[key], field) is not None:
                    arrays[(key, field)] = np.concatenate([getattr(c.by_method_k[key], field) for c in got])
        return arrays

    one, many = collect(1), collect(1000)
    assert one.keys() == many.keys() and ((("nnk", 20), "theta") in one)
    for name in one:
        np.testing.assert_array_equal(one[name], many[name], err_msg=str(name))


def test_uncertified_device_weights_are_counted_and_solved_on_the_cpu(tie_free, monkeypatch):
    """An engine proposing wrong supports: every query falls back, counted, and the answer is unchanged."""
    from nnkcli.evaluation import torch_solver

    def wrong(G, g, tol, max_iter, warm=None):
        theta = torch.zeros(g.shape, dtype=torch.float64)
        theta[:, -1] = 1.0  # the farthest neighbor alone
        return theta, torch.zeros(g.shape[0], dtype=torch.int64), torch.zeros(g.shape[0], dtype=torch.bool)

    a = classify(tie_free, k=12, methods="nnk")
    monkeypatch.setattr(torch_solver, "active_set", wrong)
    b = classify(tie_free, k=12, methods="nnk", backend="torch", device="cpu")
    assert b["timing"]["nnk_fallbacks"] == b["n_queries"] and a["timing"]["nnk_fallbacks"] == 0
    assert a["results"] == b["results"]


@pytest.mark.parametrize("fp16", [False, True])
def test_streamed_rows_give_the_resident_neighbors(tie_free, fp16):
    from nnkcli.index import normalize_rows
    from nnkcli.storage.store import FeatureStore

    with FeatureStore(tie_free) as store:
        train, q = store.split("train"), normalize_rows(store.split("val").read(0, 50))
        resident = tb.TorchSearcher(train, device="cpu").device_neighbors(q, 0, 20, False)
        streamed = tb.TorchSearcher(train, device="cpu", fp16=fp16, block_rows=97, resident=False)
        got = streamed.device_neighbors(q, 0, 20, False)
    for name in ("ids", "sims", "X", "missing"):
        np.testing.assert_array_equal(getattr(got, name).numpy(), getattr(resident, name).numpy(), err_msg=name)
