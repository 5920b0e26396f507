"""nnkcli.integrations.training: a model's features of two loaders, scored as evaluate_features scores them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset  # noqa: E402

from nnk_data import mixture  # noqa: E402
from nnkcli import evaluate_features  # noqa: E402
from nnkcli.errors import InputError, OptionError  # noqa: E402
from nnkcli.integrations.training import (  # noqa: E402
    _assemble,
    _plan,
    embed,
    evaluate_model,
    metrics,
    scoring_settings,
    search_settings,
)


def _comparable(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key != "timing"}


@pytest.fixture(scope="module")
def data():
    (xt, yt), (xv, yv) = mixture(90, 8, 1, noise=1.6), mixture(31, 8, 2, noise=1.6)
    return torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xv), torch.from_numpy(yv)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Dropout(0.5), torch.nn.Linear(6, 5))


def _oracle(forward, data, **settings) -> dict:
    """evaluate_features on features computed here, in one forward pass over each whole split."""
    xt, yt, xv, yv = data
    with torch.no_grad():
        return evaluate_features(forward(xt), yt, forward(xv), yv, **settings).to_dict()


def test_equals_evaluate_features_on_the_eval_mode_forward_and_restores_every_mode(data):
    xt, yt, xv, yv = data
    model = _model().train()
    model[1].eval()  # a submodule the user froze in eval mode stays so
    loaders = DataLoader(TensorDataset(xt, yt), batch_size=7), DataLoader(TensorDataset(xv, yv), batch_size=4)
    doc = evaluate_model(model, *loaders, k=[3, 9]).to_dict()
    modes = [m.training for m in model.modules()]
    assert modes == [True, True, False, True]
    model.eval()
    expected = _oracle(model, data, k=[3, 9])
    assert _comparable(doc) == _comparable(expected)
    assert 30 < doc["best"]["nnk"]["top1"] < 100  # not a trivial task
    model.train()
    with torch.no_grad():  # train mode (dropout on) gives other features: the evaluation really used eval mode
        noisy = evaluate_features(model(xt), yt, model(xv), yv, k=[3, 9]).to_dict()
    assert noisy["results"] != doc["results"]


class _Dicts(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i], "index": i}


def test_dict_batches_a_batch_fn_and_a_feature_fn(data):
    xt, yt, xv, yv = data
    model = _model().eval()
    expected = _comparable(_oracle(model[0], data, k=5, methods="knn"))
    dicts = DataLoader(_Dicts(xt, yt), batch_size=8), DataLoader(_Dicts(xv, yv), batch_size=8)
    by_keys = evaluate_model(model, *dicts, k=5, methods="knn", feature_fn=lambda m, x: m[0](x))
    assert _comparable(by_keys.to_dict()) == expected
    triples = [(xt[i : i + 10], "meta", yt[i : i + 10]) for i in range(0, len(yt), 10)]
    custom = evaluate_model(
        model,
        triples,
        [(xv, "meta", yv)],
        k=5,
        methods="knn",
        feature_fn=lambda m, x: m[0](x),
        batch_fn=lambda b: (b[0], b[2]),
    )
    assert _comparable(custom.to_dict()) == expected


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_padding_of_a_distributed_sampler_is_removed(shuffle, drop_last):
    # each sample's feature is its index: the assembled set must be the dataset, once, in order
    for n in (1, 5, 23, 24):
        for world in (2, 3, 4):
            ds = TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))
            parts = []
            for rank in range(world):
                sampler = DistributedSampler(ds, world, rank, shuffle=shuffle, seed=5, drop_last=drop_last)
                kind, loader, key = _plan(DataLoader(ds, batch_size=3, sampler=sampler), rank, world)
                parts.append((*embed(torch.nn.Identity(), loader), key))
            features, labels = _assemble(kind, parts)
            padded = sum(len(y) for _, y, _ in parts)
            assert padded == (n - n % world if drop_last else -(-n // world) * world)  # the sampler's own count
            if drop_last:  # a subset (the first rows, unshuffled), each once, in order
                assert len(labels) == padded and np.all(np.diff(labels) > 0)
                assert shuffle or labels.tolist() == list(range(padded))
            else:
                assert labels.tolist() == list(range(n))
            if len(labels):  # (n=1 over 2 ranks with drop_last keeps nothing)
                assert features[:, 0].tolist() == labels.astype(np.float32).tolist()


def test_a_loader_dropping_its_last_batch_under_a_distributed_sampler():
    ds = TensorDataset(torch.arange(11, dtype=torch.float32)[:, None], torch.arange(11))
    parts = []
    for rank in range(2):  # 6 indices per rank (one padding), batches of 4: the last 2 are dropped
        sampler = DistributedSampler(ds, 2, rank, shuffle=False)
        kind, loader, key = _plan(DataLoader(ds, batch_size=4, sampler=sampler, drop_last=True), rank, 2)
        parts.append((*embed(torch.nn.Identity(), loader), key))
    assert _assemble(kind, parts)[1].tolist() == list(range(8))


def test_a_sequential_loader_is_split_into_contiguous_rank_slices():
    ds = TensorDataset(torch.arange(11, dtype=torch.float32)[:, None], torch.arange(11))
    parts = []
    for rank in (2, 0, 1):  # gathered in any order
        kind, loader, key = _plan(DataLoader(ds, batch_size=2), rank, 3)
        assert kind == "slice"
        parts.append((*embed(torch.nn.Identity(), loader), key))
    assert [len(y) for _, y, _ in parts] == [3, 4, 4]
    assert _assemble(kind, parts)[1].tolist() == list(range(11))
    for odd in (DataLoader(ds, batch_size=2, shuffle=True), DataLoader(ds, batch_size=2, drop_last=True)):
        assert [_plan(odd, rank, 3)[0] for rank in range(3)] == ["rank0"] * 3
        assert _plan(odd, 1, 3)[1] is None and _plan(odd, 0, 3)[1] is odd


def test_a_protocol_preset_fills_what_is_not_given():
    dino = scoring_settings(protocol="dino")
    assert tuple(dino["k_values"]) == (10, 20, 100, 200) and dino["temperature"] == 0.07
    assert dino["top5_rule"] == "strict"
    vissl = scoring_settings(k=[5], protocol="vissl", methods="knn")
    assert vissl["k_values"] == (5,) and vissl["temperature"] == 0.1 and vissl["top5_rule"] == "inclusive"
    assert tuple(scoring_settings()["k_values"]) == tuple(range(10, 201, 10))


def test_a_preset_reaches_the_result(data):
    xt, yt, xv, yv = data
    model = _model().eval()
    loaders = [(xt, yt)], [(xv, yv)]
    doc = evaluate_model(model, *loaders, k=[4], protocol="vissl", methods="knn").to_dict()
    assert doc["parameters"]["temperature"] == 0.1 and doc["parameters"]["top5_rule"] == "inclusive"
    assert _comparable(doc) == _comparable(
        _oracle(model, data, k=[4], methods="knn", temperature=0.1, top5_rule="inclusive", protocol="vissl")
    )


@pytest.mark.parametrize(
    "settings", [dict(k=0), dict(protocol="nope"), dict(methods="svm"), dict(temperature=-1.0)], ids=str
)
def test_bad_settings_are_refused_before_any_work(settings):
    with pytest.raises(OptionError):
        scoring_settings(**settings)
    calls = []
    with pytest.raises(OptionError):
        evaluate_model(lambda x: calls.append(x), [], [], **settings)  # type: ignore[arg-type]
    assert calls == []


def test_malformed_batches_and_outputs_are_named(data):
    xt, yt, xv, yv = data
    model = _model()
    with pytest.raises(InputError, match="batch of type Tensor"):
        evaluate_model(model, [xt], [xv], k=3)
    with pytest.raises(InputError, match="no inputs or no labels"):
        evaluate_model(model, [{"pixels": xt, "label": yt}], [(xv, yv)], k=3)
    with pytest.raises(InputError, match="not a tensor"):
        evaluate_model(model, [(xt, yt)], [(xv, yv)], k=3, feature_fn=lambda m, x: m(x).tolist())
    with pytest.raises(InputError, match="expected"):
        evaluate_model(model, [(xt, yt)], [(xv, yv)], k=3, feature_fn=lambda m, x: m(x)[:1])
    with pytest.raises(InputError, match="fp16"):
        evaluate_model(model, [(xt, yt)], [(xv, yv)], k=3, fp16=True)
    with pytest.raises(InputError, match="no samples"):
        evaluate_model(model, [], [(xv, yv)], k=3)
    assert model.training  # restored after a failure too


def test_metrics_flatten_the_best_and_every_row(data):
    xt, yt, xv, yv = data
    result = evaluate_features(xt, yt, xv, yv, k=[2, 6])
    flat = metrics(result)
    doc = result.to_dict()
    for row in doc["results"]:
        assert flat[f"{row['method']}/top1@{row['k']}"] == row["top1"]
        assert flat[f"{row['method']}/top5@{row['k']}"] == row["top5"]
    for method in ("nnk", "knn"):
        assert flat[f"{method}/top1"] == doc["best"][method]["top1"] and flat[f"{method}/k"] == doc["best"][method]["k"]
    assert len(flat) == 3 * 2 + 2 * len(doc["results"])
    assert "nnk/top1_k6" in metrics(result, key_format="{method}/{metric}_k{k}")  # names MLflow accepts
    grid = metrics(evaluate_features(xt, yt, xv, yv, **scoring_settings(k=2, methods="knn", temperature=[0.05, 0.1])))
    assert {"knn/top1@2,T=0.05", "knn/top1@2,T=0.1"} <= set(grid)


def test_a_cuda_model_is_scored_on_cuda_unless_told_otherwise():
    cuda, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert search_settings({"k_values": (5,)}, cuda, False) == {"k_values": (5,), "backend": "torch", "device": "cuda"}
    assert search_settings({}, cuda, True) == {"backend": "torch", "device": "cuda", "fp16": True}
    assert search_settings({"backend": "faiss"}, cuda, False) == {"backend": "faiss"}
    assert search_settings({"device": "cpu"}, cuda, False) == {"device": "cpu"}
    assert search_settings({}, cpu, False) == {}
    with pytest.raises(InputError, match="fp16 needs a model on a CUDA device"):
        search_settings({}, cpu, True)
