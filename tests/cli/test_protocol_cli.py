"""CLI: --select-on train, temperature grids, --protocol, --solver pruning, the provenance guard."""

from __future__ import annotations

import csv
import io
import json

import pytest

from nnk_cli import invoke
from nnk_data import make_store


def test_sweep_select_on_train_json_table_and_csv(runner, store):
    res = invoke(
        runner,
        "sweep",
        store,
        "--k",
        "5,10,20",
        "--temperature",
        "0.05,0.1",
        "--select-on",
        "train",
        "--select-queries",
        "100",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["selection"]["queries"] == 100 and doc["selection"]["leave_one_out"]
    assert set(doc["selected"]) == {"nnk", "knn"} and "temperature" in doc["selected"]["knn"]
    assert {"k", "selection_top1", "selection_queries", "top1", "top1_ci", "top5"} <= set(doc["selected"]["nnk"])
    assert len([r for r in doc["results"] if r["method"] == "knn"]) == 6
    table = invoke(
        runner,
        "sweep",
        store,
        "--k",
        "5,10,20",
        "--temperature",
        "0.05,0.1",
        "--select-on",
        "train",
        "--select-queries",
        "100",
    )
    assert table.exit_code == 0
    assert "knn T=0.05 top-1 %" in table.stdout and " sel" in table.stdout
    assert "best k per method on the query split (optimistic)" in table.stdout
    assert "sel = chosen by leave-one-out top-1 on 100 rows of 'train'" in table.stdout
    out = invoke(runner, "sweep", store, "--k", "5,10", "--select-on", "train", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sum(r["selected"] == "True" for r in rows) == 2


def test_sweep_gates_check_the_selected_k(runner, store):
    res = invoke(runner, "sweep", store, "--k", "1,5,10,20", "--select-on", "train", "--format", "json")
    doc = json.loads(res.stdout)
    sel = doc["selected"]["nnk"]["top1"]
    ok = invoke(
        runner,
        "sweep",
        store,
        "--k",
        "1,5,10,20",
        "--select-on",
        "train",
        "--method",
        "nnk",
        "--min-top1",
        f"{sel - 0.01:.2f}",
    )
    assert ok.exit_code == 0
    bad = invoke(
        runner,
        "sweep",
        store,
        "--k",
        "1,5,10,20",
        "--select-on",
        "train",
        "--method",
        "nnk",
        "--min-top1",
        f"{sel + 0.01:.2f}",
    )
    assert bad.exit_code == 3 and f"k={doc['selected']['nnk']['k']}" in bad.stderr


def test_select_on_bad_values_are_usage_errors(runner, store):
    for args in (["--select-on", "val"], ["--select-queries", "0"]):
        res = invoke(runner, "sweep", store, "--k", "5", *args)
        assert res.exit_code == 2 and "Traceback" not in res.stderr
        assert f"Invalid value for '{args[0]}'" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "0"],
        ["--temperature", "0.07,x"],
        ["--temperature", "nan"],
        ["--top5-rule", "loose"],
        ["--solver", "cvx"],
        ["--protocol", "simclr"],
    ],
)
@pytest.mark.parametrize("command", ["classify", "sweep"])
def test_bad_protocol_option_values_are_usage_errors(runner, store, command, args):
    res = invoke(runner, command, store, *args)
    assert res.exit_code == 2
    assert f"Invalid value for '{args[0]}'" in res.stderr and "Traceback" not in res.stderr


def test_protocol_preset_recorded_and_overridden(runner, store):
    res = invoke(runner, "classify", store, "--protocol", "dinov2", "--method", "knn", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    p = doc["parameters"]
    assert (doc["k"], p["protocol"], p["top5_rule"], p["temperature"]) == (20, "dinov2", "inclusive", 0.07)
    res = invoke(
        runner,
        "classify",
        store,
        "--protocol",
        "dinov2",
        "--k",
        "7",
        "--top5-rule",
        "strict",
        "--method",
        "knn",
        "--format",
        "json",
    )
    doc = json.loads(res.stdout)
    assert (doc["k"], doc["parameters"]["top5_rule"]) == (7, "strict")


def test_classify_pruning_solver_says_what_it_costs(runner, store):
    res = invoke(runner, "classify", store, "--k", "20", "--solver", "pruning", "--method", "nnk")
    assert res.exit_code == 0, res.stderr
    assert "pruning solver:" in res.stdout and "fail the exact KKT certificate" in res.stdout
    doc = json.loads(invoke(runner, "classify", store, "--k", "20", "--solver", "pruning", "--format", "json").stdout)
    nnk = next(r for r in doc["results"] if r["method"] == "nnk")
    assert nnk["solver"] == "pruning" and "objective_gap_mean" in nnk
    assert nnk["kkt_tol"] == 1e-4


def test_provenance_warning_and_strict_exit_1(runner, tmp_path):
    path = make_store(
        tmp_path / "p.h5",
        train_attrs={"checkpoint_sha256": "aaa", "crop": 224},
        query_attrs={"checkpoint_sha256": "bbb", "crop": 224},
    )
    res = invoke(runner, "classify", path, "--k", "5", "--format", "json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["warnings"] and "checkpoint_sha256: aaa vs bbb" in doc["warnings"][0]
    assert "differ in provenance" in res.stderr
    for command in ("classify", "sweep"):
        res = invoke(runner, command, path, "--k", "5", "--strict-provenance")
        assert res.exit_code == 1
        assert res.stderr.startswith("Error: train split 'train' and query split 'val' differ in provenance")
        assert "Hint: extract both splits with the same model" in res.stderr and res.stdout == ""


def test_compare_reports_provenance_and_strict_exit_1(runner, tmp_path):
    path = make_store(
        tmp_path / "p.h5", train_attrs={"checkpoint_sha256": "aaa"}, query_attrs={"checkpoint_sha256": "bbb"}
    )
    res = invoke(runner, "compare", path, "--a", "knn@5", "--b", "nnk@5", "--format", "json", "--bootstrap", "200")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert len(doc["warnings"]) == 1 and "checkpoint_sha256: aaa vs bbb" in doc["warnings"][0]
    res = invoke(runner, "compare", path, "--a", "knn@5", "--b", "nnk@5", "--strict-provenance")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: train split 'train' and query split 'val' differ in provenance")
    clean = make_store(tmp_path / "q.h5")
    doc = json.loads(
        invoke(
            runner, "compare", clean, "--a", "knn@5", "--b", "nnk@5", "--format", "json", "--bootstrap", "200"
        ).stdout
    )
    assert doc["warnings"] == []
