"""nnkcli.evaluate_features: arrays in memory give sweep's document on a store of the same arrays."""

from __future__ import annotations

import numpy as np
import pytest

from nnkcli import evaluate_features, sweep, write_split
from nnkcli.errors import InputError


def _clusters(seed=0, n_train=300, n_query=80, d=16, n_classes=4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d))
    yt = np.arange(n_train) % n_classes
    yq = rng.integers(0, n_classes, size=n_query)
    Xt = (centers[yt] + 0.9 * rng.normal(size=(n_train, d))).astype(np.float32)
    Xq = (centers[yq] + 0.9 * rng.normal(size=(n_query, d))).astype(np.float32)
    return Xt, yt, Xq, yq


def _comparable(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key not in ("store", "index", "timing")}


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_document_equals_sweep_on_a_store_of_the_same_arrays(tmp_path, kernel):
    Xt, yt, Xq, yq = _clusters()
    store = tmp_path / "s.h5"
    write_split(store, "train", Xt, yt, source="test")
    write_split(store, "val", Xq, yq, source="test")
    on_disk = sweep(store, k_values=[1, 5, 10, 40], kernel=kernel).to_dict()
    in_memory = evaluate_features(Xt, yt, Xq, yq, k=[40, 1, 10, 5], kernel=kernel).to_dict()
    assert _comparable(in_memory) == _comparable(on_disk)
    assert in_memory["store"] is None and in_memory["index"]["built_in_memory"]
    assert in_memory["results"][0]["top1_ci"]  # intervals, as sweep's
    assert set(in_memory["best"]) == {"nnk", "knn"}


def test_torch_search_path_gives_the_same_results():
    pytest.importorskip("torch")
    Xt, yt, Xq, yq = _clusters(seed=6)
    faiss_doc = evaluate_features(Xt, yt, Xq, yq, k=[5, 20]).to_dict()
    torch_doc = evaluate_features(Xt, yt, Xq, yq, k=[5, 20], backend="torch", device="cpu").to_dict()
    assert torch_doc["index"]["backend"] == "torch" and faiss_doc["index"]["backend"] == "faiss"
    assert torch_doc["results"] == faiss_doc["results"]


def test_knn_top1_matches_a_naive_loop():
    Xt, yt, Xq, yq = _clusters(seed=4)
    k, T = 7, 0.07
    doc = evaluate_features(Xt, yt, Xq, yq, k=k, methods="knn").to_dict()
    t = Xt / np.linalg.norm(Xt, axis=1, keepdims=True)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    hits = 0
    for b in range(len(q)):
        sims = t.astype(np.float64) @ q[b].astype(np.float64)
        nearest = sorted(range(len(t)), key=lambda j: (-sims[j], j))[:k]
        votes = np.zeros(4)
        for j in nearest:
            votes[yt[j]] += np.exp(sims[j] / T)
        hits += int(np.argmax(votes) == yq[b])
    assert doc["results"][0]["top1"] == pytest.approx(100.0 * hits / len(q))


def test_tensors_string_labels_and_a_k_spec():
    torch = pytest.importorskip("torch")
    Xt, yt, Xq, yq = _clusters(seed=2)
    names = np.array(["a", "b", "c", "d"])
    by_name = evaluate_features(torch.from_numpy(Xt), names[yt], torch.from_numpy(Xq), names[yq], k="5..20:5")
    by_id = evaluate_features(Xt, yt, Xq, yq, k=[5, 10, 15, 20])
    assert by_name.to_dict()["k_values"] == [5, 10, 15, 20]
    assert _comparable(by_name.to_dict()) == _comparable(by_id.to_dict())
    unlabelled = evaluate_features(Xt, yt, Xq, None, k=5).to_dict()
    assert unlabelled["n_unlabelled"] == len(Xq)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(query_features=a["query_features"][:, :5]), "query features have dimension 5"),
        (
            lambda a: a["train_features"].__setitem__((3, 1), np.nan),
            r"train features contain NaN or Inf \(first: row 3\)",
        ),
        (
            lambda a: a.update(train_labels=a["train_labels"][:-1]),
            "train features have 300 rows but train labels have 299",
        ),
        (lambda a: a.update(k=301), "k=301 is larger than the train split allows"),
        (lambda a: a.update(methods="svm"), r"^methods: unknown method; choose one of nnk, knn, both \(got 'svm'\)"),
    ],
)
def test_bad_input_is_one_clear_error(change, message):
    Xt, yt, Xq, yq = _clusters()
    args = dict(train_features=Xt, train_labels=yt, query_features=Xq, query_labels=yq, k=5)
    change(args)
    with pytest.raises(InputError, match=message):
        evaluate_features(**args)


def test_a_protocol_preset_is_applied_as_sweep_applies_it(tmp_path):
    """protocol="dino" sets DINO's k values and temperature (it was recorded but not applied)."""
    Xt, yt, Xq, yq = _clusters(n_train=400)
    store = tmp_path / "s.h5"
    write_split(store, "train", Xt, yt, source="test")
    write_split(store, "val", Xq, yq, source="test")
    in_memory = evaluate_features(Xt, yt, Xq, yq, protocol="dino").to_dict()
    assert sorted({row["k"] for row in in_memory["results"]}) == [10, 20, 100, 200]  # DINO's eval_knn.py nb_knn
    assert _comparable(in_memory) == _comparable(sweep(store, protocol="dino").to_dict())
    # an explicit k wins over the preset's
    assert {row["k"] for row in evaluate_features(Xt, yt, Xq, yq, protocol="dino", k=7).to_dict()["results"]} == {7}
