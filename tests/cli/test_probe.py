"""``nnk probe``: the JSON document (the core's), the table, the options reaching the core, the exit codes."""

from __future__ import annotations

import json

from nnk_cli import invoke

GRID = "1e-2:1e2:5"


def test_json_is_the_core_document_and_the_options_reach_it(runner, store):
    from nnkcli.evaluation.probe import probe

    args = ("--c-grid", GRID, "--val-fraction", 0.2, "--seed", 3, "--patience", 0, "--no-normalize", "--threads", 1)
    result = invoke(runner, "probe", store, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    core = probe(store, c_grid=GRID, val_fraction=0.2, seed=3, patience=0, normalize=False, threads=1).to_dict()
    assert doc["schema_version"] == 1 and doc["parameters"]["normalize"] is False
    assert doc["parameters"]["c_grid"] == [0.01, 0.1, 1.0, 10.0, 100.0]
    for key in ("chosen_c", "results", "n_train", "n_queries"):
        assert doc[key] == core[key], key
    assert doc["selection"]["n_held_out"] == core["selection"]["n_held_out"] == 60  # 0.2 of 300 rows


def test_the_table_shows_the_row_and_the_choice(runner, store):
    result = invoke(runner, "probe", store, "--c-grid", GRID, "--threads", 1)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["linear"] and "±" in line)
    assert "±" in row
    assert "held-out top-1" in result.stdout and "C values tried" in result.stdout


def test_bad_values_exit_2_naming_the_option(runner, store):
    for option, value in (("--c-grid", "0,1"), ("--c-grid", "1:0.1:3"), ("--val-fraction", "1"), ("--patience", "-1")):
        result = runner.invoke(__import__("nnkcli.cli").cli.cli, ["probe", str(store), option, value])
        assert result.exit_code == 2, (option, value, result.output)
        assert f"'{option}'" in result.stderr


def test_a_missing_split_exits_1(runner, store):
    result = runner.invoke(__import__("nnkcli.cli").cli.cli, ["probe", str(store), "--query-split", "test"])
    assert result.exit_code == 1 and "split 'test' not found" in result.stderr


def test_compare_refuses_a_linear_side_on_a_store(runner, store):
    result = invoke(runner, "compare", store, "--a", "linear", "--b", "nnk")
    assert result.exit_code == 1 and "linear predictions come from 'nnk probe --out FILE'" in result.stderr
