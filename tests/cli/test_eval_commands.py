"""CLI tests for `nnk index`, `nnk classify` and `nnk sweep`: exact errors, exit codes, formats."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from nnk_cli import invoke
from nnk_data import mixture
from nnkcli.errors import InputError
from nnkcli.storage.store import write_split


def brute_force_knn_top1(store, k, T=0.07) -> float:
    """DINO's weighted k-NN written out: float64 cosine, ties by row id, exp(s/T) votes, ties to the lower class."""
    from nnkcli.storage.store import FeatureStore

    with FeatureStore(store) as fs:
        xt, yt = fs.split("train").read().astype(np.float64), np.asarray(fs.split("train").labels)
        xq, yq = fs.split("val").read().astype(np.float64), np.asarray(fs.split("val").labels)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    hits = []
    for q, y in zip(xq, yq):
        s = xt @ q
        nb = np.lexsort((np.arange(len(s)), -s))[:k]
        votes = np.zeros(int(yt.max()) + 1)
        np.add.at(votes, yt[nb], np.exp(s[nb] / T))
        hits.append(int(np.argmax(votes)) == y)
    return 100 * float(np.mean(hits))


def test_index_then_classify_json(runner, store):
    res = invoke(runner, "index", store, "--format", "json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["schema_version"] == 1 and info["n"] == 300 and info["dim"] == 12 and info["type"] == "flat"
    assert (store.parent / "feats.train.faiss").exists()
    res = invoke(runner, "classify", store, "--k", "10", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 1
    assert [r["method"] for r in doc["results"]] == ["nnk", "knn"]
    assert all(r["k"] == 10 and r["n_queries"] == 60 for r in doc["results"])
    knn = next(r for r in doc["results"] if r["method"] == "knn")
    assert knn["top1"] == pytest.approx(brute_force_knn_top1(store, k=10), abs=1e-4)
    assert doc["index"]["built_in_memory"] is False
    assert res.stderr == ""  # json: no chatter on stderr


def test_classify_without_index_says_so(runner, store):
    res = invoke(runner, "classify", store, "--k", "5", "--method", "knn")
    assert res.exit_code == 0
    assert "building a flat index in memory" in res.stderr
    assert "knn" in res.stdout and "top-1 %" in res.stdout
    quiet = invoke(runner, "classify", store, "--k", "5", "-q")
    assert quiet.stderr == ""


def test_classify_csv_and_per_class(runner, store):
    res = invoke(runner, "classify", store, "--k", "5", "--format", "csv", "--per-class")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert res.exit_code == 0
    assert {r["class"] for r in rows} == {"(all)", "a", "b", "c", "d"}
    assert len(rows) == 2 * 5
    doc = json.loads(invoke(runner, "classify", store, "--k", "5", "--format", "json", "--per-class").stdout)
    assert set(doc["results"][0]["per_class"]) == {"a", "b", "c", "d"}


def test_gate_exit_code_3_after_printing(runner, store):
    res = invoke(runner, "classify", store, "--k", "5", "--format", "json", "--min-top1", "100")
    assert res.exit_code == 3
    assert json.loads(res.stdout)["results"]  # results were still written
    assert res.stderr.startswith("Error: quality gate failed: nnk top1 ")
    assert "Hint: the results above were still written" in res.stderr
    ok = invoke(runner, "classify", store, "--k", "5", "--format", "json", "--min-top1", "1")
    assert ok.exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--k", "301"],
            "Error: k=301 is larger than the train split allows (300 rows)\nHint: the largest valid k is 300\n",
        ),
        (
            ["--exclude-self"],
            "Error: --exclude-self needs the query split to be the train split\n"
            "Hint: pass --query-split train for leave-one-out evaluation\n",
        ),
    ],
)
def test_classify_values_wrong_for_this_data_exit_1(runner, store, args, message):
    # valid option values that this store cannot satisfy: data errors (bad option values: test_option_values.py)
    res = invoke(runner, "classify", store, *args)
    assert res.exit_code == 1
    assert res.stderr.endswith(message)
    assert "Traceback" not in res.stderr


def test_missing_split(runner, store):
    res = invoke(runner, "classify", store, "--query-split", "test")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: ") and "'test'" in res.stderr


def test_dimension_mismatch(runner, tmp_path):
    path = tmp_path / "two.h5"
    write_split(path, "train", *mixture(50, 6, 0), source="t")
    with pytest.raises(InputError, match="features have dimension 7 but .* holds dimension 6"):
        write_split(path, "val", *mixture(10, 7, 1), source="t")  # the store refuses it at write time


def test_stale_and_corrupt_index(runner, store):
    assert invoke(runner, "index", store).exit_code == 0
    xt, yt = mixture(300, 12, 5)
    write_split(store, "train", xt, yt, class_names=["a", "b", "c", "d"], source="test", overwrite=True)
    res = invoke(runner, "classify", store, "--k", "5")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: index {store.parent / 'feats.train.faiss'} is stale")
    assert res.stderr.endswith("Hint: rerun 'nnk index STORE' (or pass --rebuild-index to rebuild it now)\n")
    res = invoke(runner, "classify", store, "--k", "5", "--rebuild-index")
    assert res.exit_code == 0 and "rebuilding it (--rebuild-index)" in res.stderr
    # truncated file
    index_file = store.parent / "feats.train.faiss"
    index_file.write_bytes(index_file.read_bytes()[:-10])
    res = invoke(runner, "classify", store, "--k", "5")
    assert res.exit_code == 1
    assert f"Error: index file {index_file} is truncated or damaged" in res.stderr
    res = invoke(runner, "classify", store, "--index", store.parent / "nope.faiss")
    assert res.exit_code == 1 and "Error: index file not found" in res.stderr


def test_index_for_another_dimension(runner, store, tmp_path):
    other = tmp_path / "other.h5"
    write_split(other, "train", *mixture(100, 5, 0), source="t")
    assert invoke(runner, "index", other, "--out", tmp_path / "other.faiss").exit_code == 0
    res = invoke(runner, "classify", store, "--index", tmp_path / "other.faiss")
    assert res.exit_code == 1
    assert "holds 5-dimensional vectors but split 'train' has dimension 12" in res.stderr


def test_predictions_out(runner, store, tmp_path):
    import h5py

    out = tmp_path / "pred.h5"
    res = invoke(runner, "classify", store, "--k", "8", "--out", out, "--format", "json")
    assert res.exit_code == 0
    with h5py.File(out) as f:
        assert f["neighbors"].shape == (60, 8) and f["nnk/weights"].shape == (60, 8)
        assert f["knn/scores"].shape == (60, 4) and f["nnk/top5"].shape == (60, 5)
        assert json.loads(f.attrs["parameters"])["temperature"] == 0.07


def test_sweep_table_json_csv(runner, store):
    res = invoke(runner, "sweep", store, "--k", "5..20:5")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert any(line.split()[:1] == ["20"] for line in lines)
    assert "*" in res.stdout  # best k marked
    doc = json.loads(invoke(runner, "sweep", store, "--k", "5,10", "--format", "json").stdout)
    assert doc["k_values"] == [5, 10] and set(doc["best"]) == {"nnk", "knn"}
    assert len(doc["results"]) == 4
    rows = list(csv.DictReader(io.StringIO(invoke(runner, "sweep", store, "--k", "5,10", "--format", "csv").stdout)))
    assert [(r["method"], r["k"]) for r in rows] == [("nnk", "5"), ("nnk", "10"), ("knn", "5"), ("knn", "10")]
    assert sum(r["best"] == "True" for r in rows) == 2


@pytest.mark.parametrize("spec, token", [("10..", "'10..'"), ("a,5", "'a'"), ("20..10", "'20..10'")])
def test_sweep_bad_spec_is_usage_error(runner, store, spec, token):
    res = invoke(runner, "sweep", store, "--k", spec)
    assert res.exit_code == 2
    assert "Invalid value for '--k'" in res.stderr and token in res.stderr


def test_sweep_gate_uses_best_k(runner, store):
    res = invoke(runner, "sweep", store, "--k", "5,10", "--format", "json", "--min-top1", "100")
    assert res.exit_code == 3
    assert "(k=" in res.stderr
    assert invoke(runner, "sweep", store, "--k", "5,10", "--min-top1", "1").exit_code == 0


def test_sweep_plot(runner, store, tmp_path):
    png = tmp_path / "sweep.png"
    res = invoke(runner, "sweep", store, "--k", "2..10:2", "--plot", png, "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads(res.stdout)["plot"] == str(png)
    bad = invoke(runner, "sweep", store, "--k", "5", "--plot", tmp_path / "sweep.txt")
    assert bad.exit_code == 2  # a bad option value, refused while parsing
    assert bad.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--plot': unknown file type '.txt' (got "
        f"{str(tmp_path / 'sweep.txt')!r}); use a .png, .svg or .pdf file name"
    )


def test_sweep_plot_without_matplotlib(runner, store, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    res = invoke(runner, "sweep", store, "--k", "5", "--plot", tmp_path / "p.png")
    assert res.exit_code == 1
    assert res.stderr == (
        "Error: --plot needs the optional 'plot' extra, which is not installed\nHint: pip install \"nnkcli[plot]\"\n"
    )


def test_sample_store_nnk_ahead_of_knn(runner, sample_store, tmp_path):
    store = tmp_path / "fm.h5"
    shutil.copy(sample_store, store)
    res = invoke(runner, "classify", store, "--k", "50", "--method", "both", "--format", "json")
    assert res.exit_code == 0
    rows = {r["method"]: r for r in json.loads(res.stdout)["results"]}
    assert rows["nnk"]["top1"] > rows["knn"]["top1"] + 1.0
    assert rows["nnk"]["n_queries"] == 2000
