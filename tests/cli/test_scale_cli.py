"""CLI tests for the scale options: `nnk index --shards/--max-memory` (and the query shards, see below)."""

from __future__ import annotations

import json

import pytest

from nnk_cli import invoke
from nnk_data import two_splits

# 90 train rows, 20 queries, d = 8, int labels: the shard sizes and memory figures below depend on them
_SPLITS = two_splits(90, 20, 8, 0, n_classes=3, noise=1.0)
pytestmark = pytest.mark.store(train=_SPLITS[:2], query=_SPLITS[2:], class_names=None)


def test_index_shards_then_classify_equals_unsharded(runner, store, tmp_path):
    res = invoke(runner, "index", store, "--out", tmp_path / "one.faiss", "--format", "json")
    assert res.exit_code == 0, res.stderr
    res = invoke(runner, "index", store, "--shards", 4, "--format", "json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["shards"] == 4 and summary["shard_rows"] == [23, 23, 22, 22]
    one = json.loads(
        invoke(runner, "classify", store, "--k", 7, "--index", tmp_path / "one.faiss", "--format", "json").stdout
    )
    sharded = json.loads(invoke(runner, "classify", store, "--k", 7, "--format", "json").stdout)
    assert sharded["index"]["shards"] == 4
    assert one["results"] == sharded["results"]


def test_index_max_memory(runner, store):
    res = invoke(runner, "index", store, "--max-memory", "8G", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["shards"] == 1
    res = invoke(runner, "index", store, "--max-memory", "512M")
    assert res.exit_code == 1
    assert "cannot hold one index shard plus a query chunk" in res.stderr and "Hint: give --max-memory" in res.stderr
    res = invoke(runner, "index", store, "--max-memory", "lots")
    assert res.exit_code == 2 and "bad memory size 'lots'" in res.stderr
    res = invoke(runner, "index", store, "--max-memory", "8G", "--shards", 2)
    assert res.exit_code == 2
    res = invoke(runner, "index", store, "--shards", 91)
    assert res.exit_code == 1 and "--shards must be between 1 and the number of rows (90)" in res.stderr


def test_missing_shard_exit_1_naming_it(runner, store, tmp_path):
    assert invoke(runner, "index", store, "--shards", 3).exit_code == 0
    victim = sorted(tmp_path.glob("feats.train.*.shard-3-of-3.faiss"))[0]
    victim.unlink()
    res = invoke(runner, "classify", store, "--k", 3)
    assert res.exit_code == 1
    assert f"Error: shard 3 of 3 ({victim}, rows 60:90) is missing" in res.stderr


# -- query shards and nnk merge ---------------------------------------------------------------
def _doc(res):
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _comparable(doc):
    return {k: v for k, v in doc.items() if k not in ("timing", "predictions_path", "partial_path", "merged_shards")}


@pytest.mark.parametrize("command,k", [("classify", "5"), ("sweep", "2..8:3")])
def test_shard_then_merge_prints_the_unsharded_document(runner, store, tmp_path, command, k):
    whole = _doc(invoke(runner, command, store, "--k", k, "--format", "json"))
    for i in range(3):
        _doc(
            invoke(
                runner,
                command,
                store,
                "--k",
                k,
                "--shard",
                f"{i}/3",
                "--out",
                tmp_path / f"p{i}.h5",
                "--format",
                "json",
            )
        )
    merged = _doc(invoke(runner, "merge", *(tmp_path / f"p{i}.h5" for i in range(3)), "--format", "json"))
    assert _comparable(merged) == _comparable(whole)
    table = invoke(runner, "merge", *(tmp_path / f"p{i}.h5" for i in range(3)))
    assert table.exit_code == 0 and "knn" in table.stdout


def test_merge_errors(runner, store, tmp_path):
    for i in (0, 2):
        _doc(
            invoke(
                runner,
                "classify",
                store,
                "--k",
                3,
                "--shard",
                f"{i}/3",
                "--out",
                tmp_path / f"p{i}.h5",
                "--format",
                "json",
            )
        )
    res = invoke(runner, "merge", tmp_path / "p0.h5", tmp_path / "p2.h5")
    assert res.exit_code == 1
    assert "Error: 1 of 3 shards are missing: 1/3 (queries 7:14)" in res.stderr
    res = invoke(runner, "merge", tmp_path / "p0.h5", tmp_path / "p0.h5")
    assert res.exit_code == 1 and "shard 0/3 is given twice" in res.stderr
    res = invoke(runner, "classify", store, "--shard", "0/3")
    assert res.exit_code == 2 and "--shard needs --out" in res.stderr
    res = invoke(runner, "classify", store, "--shard", "3/3", "--out", tmp_path / "x.h5")
    assert res.exit_code == 2 and "need 0 <= I < N" in res.stderr


def test_torch_backend_on_cpu_equals_faiss(runner, store):
    pytest.importorskip("torch")
    faiss_doc = _doc(invoke(runner, "sweep", store, "--k", "1..9:4", "--format", "json"))
    torch_doc = _doc(
        invoke(runner, "sweep", store, "--k", "1..9:4", "--backend", "torch", "--device", "cpu", "--format", "json")
    )
    assert torch_doc["index"]["backend"] == "torch" and torch_doc["index"]["device"] == "cpu"
    assert torch_doc["results"] == faiss_doc["results"] and torch_doc["best"] == faiss_doc["best"]
    res = invoke(runner, "classify", store, "--backend", "faiss", "--fp16")
    assert res.exit_code == 1 and "--fp16 needs --backend torch" in res.stderr
    res = invoke(runner, "classify", store, "--device", "tpu")
    assert res.exit_code == 2
