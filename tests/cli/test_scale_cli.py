"""CLI tests for the scale options: `nnk index --shards/--max-memory` (and the query shards, see below)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.storage.store import write_split


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8))
    yt, yq = rng.integers(0, 3, 90), rng.integers(0, 3, 20)
    write_split(tmp_path / "feats.h5", "train", (means[yt] + rng.normal(size=(90, 8))).astype(np.float32), yt,
                source="test")
    write_split(tmp_path / "feats.h5", "val", (means[yq] + rng.normal(size=(20, 8))).astype(np.float32), yq,
                source="test")
    return tmp_path / "feats.h5"


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_index_shards_then_classify_equals_unsharded(runner, store, tmp_path):
    res = invoke(runner, "index", store, "--out", tmp_path / "one.faiss", "--format", "json")
    assert res.exit_code == 0, res.stderr
    res = invoke(runner, "index", store, "--shards", 4, "--format", "json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["shards"] == 4 and summary["shard_rows"] == [23, 23, 22, 22]
    one = json.loads(invoke(runner, "classify", store, "--k", 7, "--index", tmp_path / "one.faiss",
                            "--format", "json").stdout)
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
