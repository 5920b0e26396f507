"""``nnk quality``: the table, the JSON document (the core's, whole), and the exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnk_cli import invoke
from nnkcli.storage.store import write_split


def test_json_is_the_core_document(runner, store):
    from nnkcli.evaluation.quality import quality

    result = invoke(runner, "quality", store, "--k", 10, "--threads", 1, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    core = quality(store, k=10, threads=1).to_dict()
    assert doc["schema_version"] == 1 and doc["split"] == "val" and doc["k"] == 10
    for key in ("rankme", "alpha_req", "nnk_interpolation_error", "loo", "summary", "n_rows", "queries"):
        assert doc[key] == core[key], key  # floats survive JSON exactly


def test_table_names_every_metric_and_its_direction(runner, store):
    result = invoke(runner, "quality", store, "--split", "train", "--k", 10, "--queries", 50, "--threads", 1)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "higher" in lines["rankme"] and "closer to 1" in lines["alpha_req"]
    assert "lower" in lines["nnk_interpolation_error"] and "±" in lines["nnk_interpolation_error"]
    assert "±" in lines["loo_nnk_top1"] and "±" in lines["loo_knn_top1"]
    assert "50 of 300 rows interpolated" in result.stdout
    assert "alpha_req needs 100 eigenvalues" in result.stdout  # the store is 12-d


def test_seed_and_queries_reach_the_core(runner, store):
    def doc(*args):
        result = invoke(runner, "quality", store, "--k", 5, "--queries", 20, "--format", "json", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    a, b, c = doc("--seed", 1), doc("--seed", 1), doc("--seed", 2)
    assert a["queries"] == 20 and a["parameters"]["seed"] == 1
    assert a["nnk_interpolation_error"] == b["nnk_interpolation_error"]
    assert a["nnk_interpolation_error"]["mean"] != c["nnk_interpolation_error"]["mean"]


def test_unlabelled_split_shows_no_loo_rows(runner, tmp_path):
    X = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)
    path = tmp_path / "u.h5"
    write_split(path, "val", X, np.full(80, -1), source="test")
    result = invoke(runner, "quality", path, "--k", 5, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "loo_nnk_top1" not in result.stdout and "no labels" in result.stdout
    doc = json.loads(invoke(runner, "quality", path, "--k", 5, "--format", "json").stdout)
    assert doc["loo"] is None and doc["summary"]["loo_knn_top1"] is None


def test_a_missing_split_is_a_data_error_naming_it(runner, store):
    result = invoke(runner, "quality", store, "--split", "holdout")
    assert result.exit_code == 1
    assert "split 'holdout' not found" in result.stderr and "available splits: train, val" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--k", "0", "bad k token '0': k must be >= 1 (got '0')"),
        ("--k", "10,20", "quality takes one k (got '10,20'); e.g. --k 50"),
        ("--queries", "0", "must be >= 1 (got 0)"),
        ("--seed", "-1", "must be >= 0 (got -1)"),
        ("--split", "a/b", "invalid split name (got 'a/b')"),
        ("--threads", "0", "must be >= 1 (got 0)"),
        ("--confidence", "1.5", "must be strictly between 0 and 1 (got 1.5)"),
    ],
)
def test_bad_option_values_are_usage_errors_before_any_work(runner, option, value, message):
    result = invoke(runner, "quality", "nope.h5", option, value)  # the store is never opened
    assert result.exit_code == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{option}'") and message in last, last


def test_k_beyond_the_split_is_a_data_error(runner, store):
    result = invoke(runner, "quality", store, "--k", 60)  # the val split has 60 rows: 59 others
    assert result.exit_code == 1
    assert "k=60" in result.stderr


def test_index_shards_give_the_same_numbers(runner, store):
    """Shards make the error read its vectors from the store instead of the index: the same numbers."""
    before = json.loads(invoke(runner, "quality", store, "--k", 10, "--threads", 1, "--format", "json").stdout)
    assert invoke(runner, "index", store, "--split", "val", "--shards", 2).exit_code == 0
    after = json.loads(invoke(runner, "quality", store, "--k", 10, "--threads", 1, "--format", "json").stdout)
    assert after["index"]["shards"] == 2
    for key, value in before["nnk_interpolation_error"].items():
        assert after["nnk_interpolation_error"][key] == pytest.approx(value, abs=1e-9), key
    assert after["loo"] == before["loo"]
