"""``nnk audit``: the CSV it writes (columns, order, flagged vs --all), its summary, its exit codes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nnk_cli import invoke

COLUMNS = ["row", "id", "label", "reliability", "suggested_label", "suggested_weight", "knn_label", "knn_share"]


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


@pytest.fixture
def labelled(tmp_path):
    """A train split whose three classes overlap (some rows unreliable), with ids and two unlabelled rows."""
    from nnkcli.storage.store import write_split

    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = (rng.normal(size=(3, 10))[y] + 1.4 * rng.normal(size=(120, 10))).astype(np.float32)
    y[[7, 50]] = -1
    path = tmp_path / "feats.h5"
    write_split(path, "train", x, y, ids=[f"img{i}" for i in range(120)], class_names=["a", "b", "c"], source="t")
    write_split(path, "pool", x[:20], None, source="t")
    return path


def test_the_csv_lists_the_flagged_rows_least_reliable_first(runner, labelled, tmp_path):
    out = tmp_path / "suspects.csv"
    res = invoke(runner, "audit", labelled, "--k", 10, "--out", out)
    assert res.exit_code == 0, res.stderr
    rows = read_csv(out)
    assert list(rows[0]) == COLUMNS
    rel = [float(r["reliability"]) for r in rows]
    assert rel == sorted(rel) and all(r < 0.5 for r in rel) and rows
    assert {r["label"] for r in rows} <= {"a", "b", "c"} and rows[0]["id"] == f"img{rows[0]['row']}"
    every = tmp_path / "all.csv"
    res_all = invoke(runner, "audit", labelled, "--k", 10, "--out", every, "--all", "--format", "json")
    assert res_all.exit_code == 0, res_all.stderr
    all_rows = read_csv(every)
    assert len(all_rows) == 118 and {r["row"] for r in all_rows}.isdisjoint({"7", "50"})  # unlabelled: not audited
    assert all_rows[: len(rows)] == rows  # the flagged rows lead the full table, in the same order
    assert [float(r["reliability"]) for r in all_rows] == sorted(float(r["reliability"]) for r in all_rows)
    doc = json.loads(res_all.stdout)
    assert doc["schema_version"] == 1 and doc["flagged"] == len(rows) and doc["unlabelled"] == 2
    assert doc["out"] == {"path": str(every), "rows": 118, "all": True}
    assert sum(c["rows"] for c in doc["classes"]) == 118 and doc["self_test"] is None
    assert "the flagged rows" not in res_all.stderr


def test_a_higher_threshold_flags_more_and_the_table_shows_the_summary(runner, labelled, tmp_path):
    out = tmp_path / "s.csv"
    res = invoke(runner, "audit", labelled, "--k", 10, "--threshold", 0.9, "--out", out)
    assert res.exit_code == 0, res.stderr
    flagged = read_csv(out)
    assert all(float(r["reliability"]) < 0.9 for r in flagged)
    assert "Least reliable rows of 'train'" in res.stdout and "Per class" in res.stdout
    assert f"{len(flagged)} of 118 labelled rows flagged (reliability < 0.9, k=10); 2 unlabelled rows not audited" in (
        res.stdout
    )
    assert f"the flagged rows ({len(flagged)}) written to {out}" in res.stderr


def test_csv_format_prints_the_per_class_summary(runner, labelled, tmp_path):
    res = invoke(runner, "audit", labelled, "--k", 10, "--out", tmp_path / "s.csv", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "class,rows,flagged,noise_estimate,mean_reliability"
    assert [line.split(",")[0] for line in lines[1:]] == ["a", "b", "c"]


def test_inject_noise_reports_the_self_test_and_marks_the_flipped_rows(runner, labelled, tmp_path):
    before = labelled.read_bytes()
    out = tmp_path / "s.csv"
    args = ["audit", labelled, "--k", 10, "--out", out, "--all", "--inject-noise", 0.1, "--noise-seed", 2]
    res = invoke(runner, *args, "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert labelled.read_bytes() == before  # the store is never modified
    doc = json.loads(res.stdout)
    test = doc["self_test"]
    assert test["flipped"] == round(0.1 * 118) and test["seed"] == 2 and test["rate"] == 0.1
    assert set(test["nnk"]) == {"precision_at_flipped", "auroc", "flagged", "flagged_precision", "flagged_recall"}
    rows = read_csv(out)
    assert list(rows[0]) == [*COLUMNS, "flipped", "original_label"]
    flipped = [r for r in rows if r["flipped"] == "1"]
    assert len(flipped) == test["flipped"] and all(r["label"] != r["original_label"] for r in flipped)
    assert sum(c["injected"] for c in doc["classes"]) == test["flipped"]
    again = invoke(runner, *args, "--format", "json")
    assert json.loads(again.stdout)["self_test"] == test  # reproducible by seed
    table = invoke(runner, *args)
    assert "Self-test" in table.stdout and "12 of 118 labels flipped in memory (rate 0.1, seed 2)" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Missing option '--out'"),
        (["--out", "x.csv", "--inject-noise", "1.5"], "--inject-noise"),
        (["--out", "x.csv", "--inject-noise", "0"], "--inject-noise"),
        (["--out", "x.csv", "--threshold", "0"], "--threshold"),
        (["--out", "x.csv", "--k", "0"], "--k"),
    ],
)
def test_usage_errors_exit_2(runner, labelled, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    res = invoke(runner, "audit", labelled, *args)
    assert res.exit_code == 2 and message in res.stderr
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "pool"], "Error: split 'pool' has no labels: there is nothing to audit"),
        (["--k", "200"], "Error: k=200 is larger than the train split allows"),
        (["--split", "nope"], "nope"),
    ],
)
def test_data_errors_exit_1_and_leave_nothing_behind(runner, labelled, tmp_path, args, message):
    out = tmp_path / "s.csv"
    out.write_text("old\n")
    before = sorted(tmp_path.iterdir())
    res = invoke(runner, "audit", labelled, "--out", out, *args)
    assert res.exit_code == 1 and message in res.stderr
    assert out.read_text() == "old\n"  # an old file is kept
    assert sorted(tmp_path.iterdir()) == before  # no temporary file left


def test_an_out_folder_that_does_not_exist_fails_before_the_work(runner, labelled, tmp_path):
    res = invoke(runner, "audit", labelled, "--out", tmp_path / "no" / "s.csv")
    assert res.exit_code == 1 and "folder not found for the audit file" in res.stderr
