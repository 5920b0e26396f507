"""``nnk fewshot``: the JSON document (the core's, whole), the table and CSV, and the exit codes."""

from __future__ import annotations

import json

from nnk_cli import invoke


def test_json_is_the_core_document(runner, store):
    from nnkcli.evaluation.fewshot import fewshot

    args = ("--per-class", "1,3", "--tries", 2, "--seed", 4, "--k", "2,50", "--method", "knn", "--threads", 1)
    result = invoke(runner, "fewshot", store, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    core = fewshot(store, per_class=[1, 3], tries=2, seed=4, k="2,50", methods="knn", threads=1).to_dict()
    assert doc["schema_version"] == 1 and doc["per_class"] == [1, 3] and doc["tries"] == 2
    for key in ("results", "subsets", "k_capped", "interval", "parameters"):
        assert doc[key] == core[key], key
    assert [s["n_rows"] for s in doc["subsets"]] == [4, 4, 12, 12]  # the store's 4 classes
    assert doc["k_capped"] == [
        {"per_class": 1, "k": [50], "k_used": 4, "train_rows": 4},
        {"per_class": 3, "k": [50], "k_used": 12, "train_rows": 12},
    ]


def test_table_and_csv(runner, store):
    result = invoke(runner, "fewshot", store, "--per-class", 2, "--tries", 2, "--k", 5, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "n/class" in result.stdout and "±" in result.stdout and "std across tries (ddof 1)" in result.stdout
    result = invoke(runner, "fewshot", store, "--per-class", 2, "--tries", 2, "--k", "5,50", "--format", "csv")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.startswith("per_class,method,k,k_used,temperature,top1,top1_ci_low,top1_ci_high,top1_std")
    assert len(rows) == 4 and rows[1].startswith("2,nnk,50,8,")
    assert "k 50 capped at 8" in result.stderr


def test_a_subset_file(runner, store, tmp_path):
    f = tmp_path / "subset.txt"
    f.write_text("# rows\n0\n1\n2\n3\n4\n5\n")
    result = invoke(runner, "fewshot", store, "--subset-file", f, "--k", 3, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["subset_file"] == str(f) and doc["per_class"] is None
    assert doc["subsets"][0]["rows"] == [0, 1, 2, 3, 4, 5] and doc["results"][0]["tries"] == 1


def test_exit_codes(runner, store, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("0\nnope.png\n")
    result = invoke(runner, "fewshot", store, "--subset-file", f)
    assert result.exit_code == 1 and "1 of 2 entries name no train row: 'nope.png'" in result.stderr
    result = invoke(runner, "fewshot", store, "--query-split", "train")
    assert result.exit_code == 1 and "query split is the train split" in result.stderr
    for option, value in (("--per-class", "1,x"), ("--per-class", "0"), ("--tries", "0"), ("--seed", "-1")):
        result = invoke(runner, "fewshot", store, option, value)
        assert result.exit_code == 2 and option in result.stderr, (option, result.stderr)
    result = invoke(runner, "fewshot", store, "--exclude-self")
    assert result.exit_code == 2 and "No such option" in result.stderr
