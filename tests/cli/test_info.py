"""``nnk info``: the sample store, formats, and errors."""

from __future__ import annotations

import json

import h5py
import numpy as np

from nnkcli.cli import cli
from nnkcli.storage.store import write_split

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _run(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sample_store_json(runner, sample_store):
    result = _run(runner, "info", sample_store, "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1
    assert doc["classes"] == FASHION
    assert list(doc["splits"]) == ["train", "val"]
    train, val = doc["splits"]["train"], doc["splits"]["val"]
    assert (train["n"], train["dim"], train["dtype"]) == (10000, 64, "float32")
    assert (val["n"], val["dim"], val["dtype"]) == (2000, 64, "float32")
    assert train["class_counts"] == dict.fromkeys(FASHION, 1000) and train["unlabelled"] == 0
    assert val["class_counts"] == dict.fromkeys(FASHION, 200) and val["unlabelled"] == 0
    assert "Fashion-MNIST" in train["attrs"]["source"] and len(train["attrs"]["content_sha256"]) == 64


def test_sample_store_table(runner, sample_store):
    result = _run(runner, "info", sample_store)
    assert result.exit_code == 0
    rows = {}
    for line in result.stdout.splitlines():
        if line.strip():
            rows.setdefault(line.split()[0], line.split())  # first table first
    assert rows["train"][1:5] == ["10000", "64", "float32", "10"]
    assert rows["val"][1:5] == ["2000", "64", "float32", "10"]
    assert "Samples per class" in result.stdout
    assert rows["Trouser"] == ["Trouser", "1000", "200"]
    assert "Provenance" in result.stdout


def test_csv(runner, tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", np.eye(3) + 1, ["a", "b", "a"], source="src")
    write_split(store, "val", np.eye(3) + 1, ["b", "-1", "-1"], source="src2")
    result = _run(runner, "info", store, "--format", "csv")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "split,n,dim,dtype,n_classes,unlabelled,created_at,source"
    assert lines[1].startswith("train,3,3,float32,2,0,") and lines[1].endswith(",src")
    assert lines[2].startswith("val,3,3,float32,1,2,") and lines[2].endswith(",src2")


def test_many_classes_are_cut_in_the_table_only(runner, tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", np.ones((120, 2)), np.arange(120), source="s")
    table = _run(runner, "info", store).stdout
    assert "70 more classes; --format json lists all" in table
    doc = json.loads(_run(runner, "info", store, "--format", "json").stdout)
    assert len(doc["classes"]) == len(doc["splits"]["train"]["class_counts"]) == 120


def test_errors(runner, tmp_path):
    result = _run(runner, "info", tmp_path / "none.h5")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: store not found: {tmp_path / 'none.h5'}",
        f"Hint: create it with: nnk extract {tmp_path / 'none.h5'} --split train --from FEATURES",
    ]
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    result = _run(runner, "info", other)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"Error: {other} is not an nnkcli feature store"
    text = tmp_path / "t.h5"
    text.write_text("x")
    result = _run(runner, "info", text)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"Error: {text} is not an HDF5 file (or it is damaged)"


def test_help_has_examples(runner):
    result = _run(runner, "info", "--help")
    assert result.exit_code == 0
    assert "nnk info sample_data/fashion-mnist.h5" in result.stdout
