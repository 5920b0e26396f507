"""nnkcli.evaluation.classification / nnkcli.evaluation.sweeps against independent oracles on small stores.

Oracles: brute-force float64 neighbor search, DINO's kNN formula written out per
query, and NNK solved per query with scipy.optimize.nnls on the least-squares form.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

import nnk_data
from nnkcli.errors import InputError, OptionError, StaleIndexError
from nnkcli.evaluation.classification import classify
from nnkcli.evaluation.results import ClassifyResult
from nnkcli.evaluation.sweeps import sweep
from nnkcli.numerics.metrics import Accumulator
from nnkcli.plain import jsonable
from nnkcli.storage.store import write_split

N_CLASSES = 5


mixture = partial(nnk_data.mixture, n_classes=N_CLASSES, noise=0.9 * 1.5, means_seed=1234)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "small.h5"
    xt, yt = mixture(400, 24, seed=0)
    xq, yq = mixture(90, 24, seed=1)
    yq[:5] = -1  # unlabelled queries: predicted, not scored
    names = [f"class{c}" for c in range(N_CLASSES)]
    write_split(path, "train", xt, yt, class_names=names, source="test")
    write_split(path, "val", xq, np.array([names[c] if c >= 0 else -1 for c in yq], dtype=object), source="test")
    return path, xt, yt, xq, yq


def _norm(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def oracle(xt, yt, xq, yq, k, exclude_self=False, T=0.07, kernel="cosine"):
    """Per-query naive evaluation; returns {method: (top1 %, top5 %, predictions)}.

    ``kernel="gaussian"``: exp(-|a-b|^2 / 2s^2), s = the distance from the query to its k-th
    neighbor / 3 (1 when that is 0), the definition in the README.
    """
    Xt, Xq = _norm(xt), _norm(xq)
    out = {"knn": [], "nnk": []}
    for i, q in enumerate(Xq):
        s = Xt @ q
        order = np.lexsort((np.arange(len(s)), -s))
        if exclude_self:
            order = order[order != i]
        nb = order[:k]
        sk, yk = s[nb], yt[nb]
        # DINO eval_knn: class score = sum of exp(s/T) over neighbors of that class
        knn = np.zeros(N_CLASSES)
        for sj, yj in zip(sk, yk):
            knn[yj] += np.exp(sj / T)
        # NNK: min 1/2 t'Gt - g't, t >= 0  ==  min ||L't - L^-1 g||, G = LL'
        if kernel == "gaussian":
            X = Xt[nb]
            d2 = ((X - q) ** 2).sum(1)
            sigma = np.sqrt(d2.max()) / 3 or 1.0
            G = np.exp(-((X[:, None, :] - X[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))
            g = np.exp(-d2 / (2 * sigma**2))
        else:
            G = (1 + Xt[nb] @ Xt[nb].T) / 2
            g = (1 + sk) / 2
        L = np.linalg.cholesky(G + 1e-12 * np.eye(k))
        theta, _ = nnls(L.T, np.linalg.solve(L, g))
        nnk = np.zeros(N_CLASSES)
        for tj, yj in zip(theta, yk):
            nnk[yj] += tj
        nnk /= theta.sum()
        out["knn"].append(knn)
        out["nnk"].append(nnk)
    res = {}
    labelled = yq >= 0
    for m, scores in out.items():
        scores = np.array(scores)
        # ties to the lower class id; zero-score classes never count as hits
        ranks = np.argsort(-scores, axis=1, kind="stable")
        top5 = np.where(np.take_along_axis(scores, ranks, 1)[:, :5] > 0, ranks[:, :5], -1)
        top1 = 100 * np.mean(top5[labelled, 0] == yq[labelled])
        top5a = 100 * np.mean((top5[labelled] == yq[labelled, None]).any(1))
        res[m] = (top1, top5a, top5)
    return res


@pytest.mark.parametrize("k", [1, 7, 20])
def test_classify_matches_oracle(store, k):
    path, xt, yt, xq, yq = store
    doc = classify(path, k=k, methods="both")
    ref = oracle(xt, yt, xq, yq, k)
    rows = {r["method"]: r for r in doc["results"]}
    for m in ("knn", "nnk"):
        assert rows[m]["top1"] == pytest.approx(ref[m][0], abs=1e-3), m
        assert rows[m]["top5"] == pytest.approx(ref[m][1], abs=1e-3), m
        assert rows[m]["n_queries"] == 85 and rows[m]["n_unlabelled"] == 5
    assert doc["n_unlabelled"] == 5
    assert doc["index"]["built_in_memory"] is True


def test_leave_one_out_matches_oracle(store):
    path, xt, yt, _, _ = store
    doc = classify(path, k=10, query_split="train", exclude_self=True)
    ref = oracle(xt, yt, xt, yt, 10, exclude_self=True)
    for r in doc["results"]:
        assert r["top1"] == pytest.approx(ref[r["method"]][0], abs=1e-3)


def test_predictions_file(store, tmp_path):
    import h5py

    path, xt, yt, xq, yq = store
    out = tmp_path / "pred.h5"
    classify(path, k=12, predictions_path=out, chunk_size=16)
    ref = oracle(xt, yt, xq, yq, 12)
    with h5py.File(out, "r") as f:
        assert f.attrs["nnk_format"] == "predictions" and f.attrs["k"] == 12
        assert f["neighbors"].shape == (90, 12) and f["neighbors"].dtype == np.int64
        np.testing.assert_array_equal(f["labels"][:], yq)
        np.testing.assert_array_equal(f["knn/top5"][:], ref["knn"][2])
        np.testing.assert_array_equal(f["nnk/top5"][:], ref["nnk"][2])
        # the raw weights satisfy the KKT conditions of their own problem
        Xt, Xq = _norm(xt), _norm(xq)
        for i in range(0, 90, 9):
            nb = f["neighbors"][i]
            theta = f["nnk/weights"][i].astype(np.float64)
            G = (1 + Xt[nb] @ Xt[nb].T) / 2
            g = (1 + Xt[nb] @ Xq[i]) / 2
            lam = G @ theta - g
            assert theta.min() >= 0
            assert lam.min() > -1e-5 and np.abs(theta * lam).max() < 1e-5
        np.testing.assert_allclose(f["similarities"][:, 0], np.sort(Xq @ Xt.T, axis=1)[:, -1], atol=1e-6)


def test_results_do_not_depend_on_chunk_size_or_threads(store):
    path = store[0]
    a = classify(path, k=15, chunk_size=1, threads=1)
    b = classify(path, k=15, chunk_size=1000, threads=2)
    assert a["results"] == b["results"]  # every accuracy, interval and support statistic
    assert a["timing"]["chunk_size"] == 1 and b["timing"]["chunk_size"] == 1000  # really different runs
    oracle_top1 = {m: r[0] for m, r in oracle(*store[1:], k=15).items()}
    assert {r["method"]: r["top1"] for r in a["results"]} == pytest.approx(oracle_top1, abs=1e-4)


def test_sweep_equals_classify_at_each_k(store):
    path = store[0]
    res = sweep(path, k_values=[3, 10, 25], methods="both", chunk_size=32)
    for k in (3, 10, 25):
        single = {r["method"]: r for r in classify(path, k=k, chunk_size=7)["results"]}
        for r in (r for r in res.results if r["k"] == k):
            assert r == single[r["method"]]
    assert set(res.best) == {"nnk", "knn"}
    assert res.to_dict()["k_values"] == [3, 10, 25]


def test_gaussian_kernel_matches_the_oracle(store):
    path, xt, yt, xq, yq = store
    doc = classify(path, k=10, methods="nnk", kernel="gaussian")
    (row,) = doc["results"]
    top1, top5, _ = oracle(xt, yt, xq, yq, k=10, kernel="gaussian")["nnk"]
    assert (row["top1"], row["top5"]) == (pytest.approx(top1, abs=1e-4), pytest.approx(top5, abs=1e-4))
    cosine = classify(path, k=10, methods="nnk")["results"][0]
    assert oracle(xt, yt, xq, yq, k=10)["nnk"][0] == pytest.approx(cosine["top1"], abs=1e-4)


def test_bad_k_and_options(store):
    path = store[0]
    with pytest.raises(InputError, match=r"k=401 is larger than the train split allows \(400 rows\)") as err:
        classify(path, k=401)
    assert err.value.hint == "the largest valid k is 400"
    with pytest.raises(InputError) as err:
        classify(path, k=400, query_split="train", exclude_self=True)
    assert err.value.hint == "the largest valid k is 399"
    assert type(err.value) is InputError  # wrong for this data only: exit 1
    with pytest.raises(ValueError, match=r"^k: k must be >= 1 \(got ") as err:  # the Python parameter, not --k
        classify(path, k=0)
    assert isinstance(err.value, OptionError) and "--k" not in str(err.value)
    with pytest.raises(ValueError, match=r"^methods: unknown method") as err:
        classify(path, k=5, methods="svm")
    assert "--method" not in str(err.value)
    with pytest.raises(InputError, match="--exclude-self needs the query split to be the train split"):
        classify(path, k=5, exclude_self=True)
    with pytest.raises(OptionError, match="^temperature: must be a finite number > 0") as err:
        classify(path, k=5, temperature=0)
    assert err.value.exit_code == 2 and err.value.option == "--temperature" and err.value.name == "temperature"


def test_saved_index_used_and_stale_index_refused(tmp_path):
    from nnkcli.index import index_store

    path = tmp_path / "s.h5"
    xt, yt = mixture(200, 8, seed=3)
    xq, yq = mixture(20, 8, seed=4)
    write_split(path, "train", xt, yt, source="t")
    write_split(path, "val", xq, yq, source="t")
    index_store(path)
    doc = classify(path, k=5)
    assert doc["index"]["built_in_memory"] is False and doc["index"]["path"].endswith("s.train.faiss")
    write_split(path, "train", xt[::-1].copy(), yt[::-1].copy(), source="t", overwrite=True)
    with pytest.raises(StaleIndexError, match="is stale"):
        classify(path, k=5)
    doc = classify(path, k=5, rebuild_index=True)
    assert doc["index"]["rebuilt"] is True
    assert classify(path, k=5)["index"]["rebuilt"] is False  # the rebuilt index was saved


def test_unlabelled_query_split(tmp_path):
    path = tmp_path / "u.h5"
    xt, yt = mixture(100, 8, seed=5)
    write_split(path, "train", xt, yt, source="t")
    write_split(path, "val", mixture(10, 8, seed=6)[0], None, source="t")
    doc = classify(path, k=5)
    assert doc["results"][0]["n_queries"] == 0 and doc["n_unlabelled"] == 10
    with pytest.raises(InputError, match="has no labels, so --min-top1/--min-top5 cannot be checked"):
        classify(path, k=5, gate_requested=True)


def test_interrupted_classify_keeps_the_old_predictions_file(store, tmp_path, monkeypatch):
    import nnkcli.evaluation.streaming as streaming

    path = store[0]
    out = tmp_path / "pred.h5"
    out.write_bytes(b"old results")
    real = streaming.score_chunk
    calls = []

    def interrupt_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "score_chunk", interrupt_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        classify(path, k=5, predictions_path=out, chunk_size=10)
    assert out.read_bytes() == b"old results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5"]


# -- the chunk memory budget holds for every k (hardening) ----------------------------------


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 20000), dim=st.integers(1, 4096), n_classes=st.integers(1, 22000), budget=st.integers(2**16, 2**31)
)
def test_default_chunk_never_exceeds_the_budget(k, dim, n_classes, budget):
    from nnkcli.errors import InputError
    from nnkcli.evaluation.memory import default_chunk_size

    # oracle: the docstring's per-query formula, written out here
    per_query = 4 * k * dim + 32 * k * k + 16 * n_classes + 64 * k
    if per_query > budget:
        with pytest.raises(InputError, match="for a single query"):
            default_chunk_size(k, dim, n_classes, budget)
        return
    chunk = default_chunk_size(k, dim, n_classes, budget)
    assert 1 <= chunk <= 8192
    assert chunk * per_query <= budget
    assert chunk == 8192 or (chunk + 1) * per_query > budget  # as large as the budget allows


def test_k_near_n_names_the_memory_it_needs():
    from nnkcli.errors import InputError
    from nnkcli.evaluation.memory import default_chunk_size

    with pytest.raises(InputError) as info:
        default_chunk_size(10_000, 768, 1000)  # was a (16, 10000, 10000) float64 block: 11.9 GiB
    assert "k=10000 needs 3.0 GiB for a single query" in info.value.message
    assert info.value.hint.startswith("use --k 4") and "--chunk-size 1" in info.value.hint
    assert default_chunk_size(3000, 768, 1000) == 1  # 0.3 GiB per query: one at a time, within 512 MiB


def _without_run_facts(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key not in ("timing", "schema_version")}


def test_classify_takes_k_as_an_int_a_spec_or_a_one_item_list(cluster_store):
    ref = classify(cluster_store, k=10).to_dict()
    assert [(r["method"], r["k"]) for r in ref["results"]] == [("nnk", 10), ("knn", 10)]
    for k in ("10", [10]):
        assert classify(cluster_store, k=k).to_dict()["results"] == ref["results"]
    with pytest.raises(ValueError, match=r"^k: classify evaluates one k \(got \[10, 20\]\)"):
        classify(cluster_store, k=[10, 20])
    with pytest.raises(TypeError, match=r"k_values given twice \(as k and as k_values\)"):
        classify(cluster_store, k=10, k_values=10)


def test_the_result_is_what_the_command_line_prints(cluster_store, runner):
    from nnkcli.cli import cli

    result = classify(cluster_store, k=10)
    assert isinstance(result, ClassifyResult)
    printed = runner.invoke(cli, ["classify", str(cluster_store), "--k", "10", "--format", "json"])
    assert printed.exit_code == 0, printed.output
    assert _without_run_facts(json.loads(printed.stdout)) == _without_run_facts(jsonable(result.to_dict()))
    rows = result.rows()
    assert [(r["method"], r["k"], r["temperature"]) for r in rows] == [("nnk", 10, None), ("knn", 10, 0.07)]
    for row, doc_row in zip(rows, result.to_dict()["results"]):
        assert (row["top1"], row["top5"]) == (doc_row["top1"], doc_row["top5"])
        assert [row["top1_ci_low"], row["top1_ci_high"]] == doc_row["top1_ci"]
        assert 0.0 <= row["top1"] <= 100.0  # a percentage


def test_with_a_predictions_file_the_document_is_built_once(cluster_store, tmp_path, monkeypatch):
    """Each row's intervals (a bootstrap for the balanced accuracy) are computed once per row, not once
    for the printed document and again for the file's attributes."""
    from nnkcli.evaluation.predictions import PredictionFile

    calls = []
    real = Accumulator.result

    def counted(self, *args, **kwargs):
        calls.append((self.method, self.k))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accumulator, "result", counted)
    doc = classify(cluster_store, k=5, predictions_path=tmp_path / "p.h5", threads=1).to_dict()
    assert sorted(calls) == [("knn", 5), ("nnk", 5)]
    assert doc["predictions_path"] == str(tmp_path / "p.h5")
    with PredictionFile(tmp_path / "p.h5") as pred:  # the file keeps that document's parameters
        assert pred.attrs["parameters"] == jsonable(doc["parameters"]) and pred.k == 5
