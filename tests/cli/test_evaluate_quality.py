"""``nnk evaluate --quality``: quality metrics recorded in the history (also without labels),
gated with ``--gate-metric``, shown by ``nnk history`` and written to TensorBoard.

The metrics themselves come from a fake ``nnkcli.evaluation.quality.quality`` that returns
the values a test gives per store: these tests pin down the tracking, not the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.storage.store import write_split
from nnkcli.tracking.history import read_history

SUMMARY_KEYS = ("rankme", "alpha_req", "nnk_interpolation_error", "loo_nnk_top1", "loo_knn_top1")


class FakeResult:
    def __init__(self, summary: dict):
        self.summary = summary

    def to_dict(self) -> dict:
        return {"schema_version": 1, "summary": dict(self.summary)}


@pytest.fixture
def fake_quality(monkeypatch):
    """``values[store file name] = {metric: value}``; ``calls`` records each call's store name and settings."""
    values: dict[str, dict] = {}
    calls: list[dict] = []

    def quality(store_path, **kwargs):
        calls.append({"store": Path(store_path).name, **kwargs})
        summary = dict.fromkeys(SUMMARY_KEYS)
        summary.update(values[Path(store_path).name])
        return FakeResult(summary)

    monkeypatch.setattr("nnkcli.evaluation.quality.quality", quality)
    return values, calls


def unlabelled_store(path: Path, seed: int = 0) -> Path:
    """A store whose query split 'val' has no labels (and no train split: nothing needs one)."""
    rng = np.random.default_rng(seed)
    write_split(path, "val", rng.normal(size=(40, 8)).astype(np.float32), source="test")
    return path


def evaluate(runner, *args):
    return runner.invoke(cli, ["evaluate", *map(str, args)])


@pytest.fixture
def two_epochs(tmp_path, fake_quality):
    """epoch_1.h5 and epoch_2.h5, unlabelled; epoch_2 is worse on both gated metrics."""
    values, _ = fake_quality
    folder = tmp_path / "feats"
    folder.mkdir()
    unlabelled_store(folder / "epoch_1.h5", 1)
    unlabelled_store(folder / "epoch_2.h5", 2)
    values["epoch_1.h5"] = {"rankme": 30.0, "alpha_req": 0.9, "nnk_interpolation_error": 0.2}
    values["epoch_2.h5"] = {"rankme": 20.0, "alpha_req": 1.1, "nnk_interpolation_error": 0.3}
    return folder


def test_an_unlabelled_store_gets_an_entry_with_its_quality(runner, tmp_path, fake_quality):
    values, calls = fake_quality
    store = unlabelled_store(tmp_path / "epoch_5.h5")
    values["epoch_5.h5"] = {"rankme": 12.5, "alpha_req": 0.75, "nnk_interpolation_error": 0.125}
    hist = tmp_path / "h.jsonl"
    res = evaluate(runner, store, "--history", hist, "--quality", "--format", "json")
    assert res.exit_code == 0, res.stderr
    [source] = json.loads(res.stdout)["sources"]
    assert source["status"] == "evaluated" and source["best"] == {}
    assert source["quality"]["rankme"] == 12.5
    [entry] = read_history(hist).entries
    assert entry["quality"] == {
        "rankme": 12.5,
        "alpha_req": 0.75,
        "nnk_interpolation_error": 0.125,
        "loo_nnk_top1": None,
        "loo_knn_top1": None,
    }
    assert (entry["quality_split"], entry["quality_k"]) == ("val", 50)
    assert (entry["best"], entry["results"], entry["n_queries"], entry["n_train"]) == ({}, [], 40, None)
    assert entry["warnings"] == ["query split 'val' has no labels: no accuracy, quality metrics only"]
    assert entry["parameters"]["quality"] == {"split": "val", "k": 50, "queries": None, "seed": 0}
    [call] = calls
    assert (call["store"], call["split"], call["k"], call["queries"], call["seed"]) == (
        "epoch_5.h5",
        "val",
        50,
        None,
        0,
    )


def test_quality_settings_are_part_of_the_parameter_set(runner, tmp_path, fake_quality):
    values, calls = fake_quality
    store = unlabelled_store(tmp_path / "s.h5")
    values["s.h5"] = {"rankme": 5.0}
    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, store, "--history", hist, "--quality").exit_code == 0
    res = evaluate(runner, store, "--history", hist, "--quality", "--format", "json")
    assert json.loads(res.stdout)["sources"][0]["reason"] == "already in history"
    # another k or sample is another series: evaluated again, its own line
    res = evaluate(runner, store, "--history", hist, "--quality", "--quality-k", "7", "--quality-queries", "30")
    assert res.exit_code == 0, res.stderr
    assert [(c["k"], c["queries"]) for c in calls] == [(50, None), (7, 30)]
    entries = read_history(hist).entries
    assert len({e["params_key"] for e in entries}) == 2
    # without --quality an unlabelled query split is still an error, as it always was
    write_split(store, "train", np.eye(8, dtype=np.float32), np.arange(8) % 2, source="test")
    res = evaluate(runner, store, "--history", hist)
    assert res.exit_code == 1
    assert "query split 'val' has no labels" in res.stderr


def test_a_labelled_store_records_accuracy_and_quality(runner, store, tmp_path, fake_quality):
    values, _ = fake_quality
    values["feats.h5"] = {"rankme": 7.0, "loo_nnk_top1": 91.0}
    hist = tmp_path / "h.jsonl"
    res = evaluate(runner, store, "--history", hist, "--quality", "--k", "5", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    header = res.stdout.splitlines()[0].split(",")
    assert header[-3:] == ["rankme", "loo_nnk_top1", "seconds"]
    [entry] = read_history(hist).entries
    assert set(entry["best"]) == {"nnk", "knn"} and entry["quality"]["loo_nnk_top1"] == 91.0


def test_gate_on_rankme_fails_a_regression_naming_both_values(runner, tmp_path, two_epochs):
    hist = tmp_path / "h.jsonl"
    args = ("--watch-dir", two_epochs, "--history", hist, "--quality", "--gate-metric", "rankme")
    res = evaluate(runner, *args, "--fail-on-regression", "5", "-q")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[0] == (
        "Error: regression: rankme of epoch_2.h5 (step 2) is 20, 10 below the best 30 of epoch_1.h5 (step 1) "
        "(higher is better; allowed: 5)"
    )
    assert len(read_history(hist).entries) == 2  # recorded before the gate failed
    res = evaluate(runner, *args, "--fail-on-regression", "10", "--format", "json")
    assert res.exit_code == 0, res.stderr
    gate = json.loads(res.stdout)["gate"]
    assert gate["gate_metric"] == "rankme" and gate["passed"]
    assert [(s["source"], s["value"], s["best_other_value"], s["drop"]) for s in gate["sources"]] == [
        ("epoch_1.h5 (step 1)", 30.0, 20.0, -10.0),
        ("epoch_2.h5 (step 2)", 20.0, 30.0, 10.0),
    ]


def test_gate_on_the_interpolation_error_fails_when_it_rises(runner, tmp_path, two_epochs):
    hist = tmp_path / "h.jsonl"
    args = ("--watch-dir", two_epochs, "--history", hist, "--quality", "--gate-metric", "nnk_interpolation_error")
    res = evaluate(runner, *args, "--fail-on-regression", "0.05", "-q")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[0] == (
        "Error: regression: nnk_interpolation_error of epoch_2.h5 (step 2) is 0.3, 0.1 above the best 0.2 of "
        "epoch_1.h5 (step 1) (lower is better; allowed: 0.05)"
    )
    assert evaluate(runner, *args, "--fail-on-regression", "0.1").exit_code == 0


def test_gate_on_a_metric_not_recorded_passes_and_says_so(runner, tmp_path, two_epochs):
    hist = tmp_path / "h.jsonl"
    res = evaluate(
        runner, "--watch-dir", two_epochs, "--history", hist, "--quality",
        "--gate-metric", "loo_nnk_top1", "--fail-on-regression", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "warning: epoch_1.h5 (step 1) has no loo_nnk_top1 recorded: not gated on it" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--quality", "--gate-metric", "rankme"), "--gate-metric rankme qualifies --fail-on-regression X"),
        (("--gate-metric", "rankme", "--fail-on-regression", "1"), "gates a metric of --quality"),
        (
            ("--quality", "--gate-metric", "rankme", "--fail-on-regression", "1", "--significant"),
            "it cannot qualify --gate-metric",
        ),
        (("--quality", "--gate-metric", "alpha_req", "--fail-on-regression", "1"), "'alpha_req' is not one of"),
        (("--quality", "--quality-k", "0"), "--quality-k"),
    ],
)
def test_gate_metric_usage_errors(runner, tmp_path, args, message):
    store = unlabelled_store(tmp_path / "s.h5")
    res = evaluate(runner, store, "--history", tmp_path / "h.jsonl", *args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert not (tmp_path / "h.jsonl").exists()


def test_history_shows_the_quality_columns(runner, tmp_path, two_epochs):
    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, "--watch-dir", two_epochs, "--history", hist, "--quality").exit_code == 0
    res = runner.invoke(cli, ["history", str(hist), "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "step,source,sha256,rankme,alpha_req,nnk_interpolation_error,best"
    assert [line.split(",", 3)[:2] + line.rsplit(",", 4)[1:] for line in lines[1:]] == [
        ["1", "epoch_1.h5", "30.0", "0.9", "0.2", ""],
        ["2", "epoch_2.h5", "20.0", "1.1", "0.3", ""],
    ]
    doc = json.loads(runner.invoke(cli, ["history", str(hist), "--format", "json"]).stdout)
    assert doc["quality_metrics"] == ["rankme", "alpha_req", "nnk_interpolation_error"]
    assert [r["rankme"] for r in doc["rows"]] == [30.0, 20.0]
    table = runner.invoke(cli, ["history", str(hist)], terminal_width=200).stdout
    assert "RankMe" in table and "NNK interp. error" in table and "0.3000" in table


def test_history_plots_a_panel_per_quality_metric(runner, tmp_path, two_epochs):
    pytest.importorskip("matplotlib")
    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, "--watch-dir", two_epochs, "--history", hist, "--quality").exit_code == 0
    res = runner.invoke(cli, ["history", str(hist), "--plot", str(tmp_path / "h.svg")])
    assert res.exit_code == 0, res.stderr
    svg = (tmp_path / "h.svg").read_text()
    assert "RankMe" in svg and "lower is better" in svg and "query splits without labels" in svg


def test_tensorboard_gets_the_quality_scalars(runner, tmp_path, two_epochs):
    pytest.importorskip("tensorboardX")
    import tfevents  # tests/helpers: an independent event-file reader

    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, "--watch-dir", two_epochs, "--history", hist, "--quality").exit_code == 0
    res = runner.invoke(cli, ["history", str(hist), "--tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.stderr
    got = tfevents.scalars(tmp_path / "tb")
    assert got == {
        "quality/rankme": [(1, 30.0), (2, 20.0)],
        "quality/alpha_req": [(1, pytest.approx(0.9)), (2, pytest.approx(1.1))],
        "quality/nnk_interpolation_error": [(1, pytest.approx(0.2)), (2, pytest.approx(0.3))],
    }
