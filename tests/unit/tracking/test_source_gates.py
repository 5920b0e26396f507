"""nnkcli.tracking.source_gates: the gates of a run, called from Python on a small history."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nnkcli.tracking.history import append_entry, read_history
from nnkcli.tracking.runner import RunStatus, SourceOutcome
from nnkcli.tracking.source_gates import gate_run


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def entry(n: int, nnk: float, *, step: int, key: str = "set-a", top5: float = 95.0, **extra) -> dict:
    return {
        "source": f"/runs/checkpoint{step:04d}.pth",
        "sha256": sha(n),
        "step": step,
        "params_key": key,
        "best": {"nnk": {"k": 20, "top1": nnk, "top5": top5}, "knn": {"k": 10, "top1": nnk - 1, "top5": top5}},
        "results": [],
        **extra,
    }


@pytest.fixture
def history(tmp_path) -> Path:
    """Three sources of one parameter set (best nnk top-1: 80 at step 20), one of another set."""
    path = tmp_path / "history.jsonl"
    for e in (
        entry(1, 75.0, step=10),
        entry(2, 80.0, step=20),
        entry(3, 78.0, step=30),
        entry(4, 99.0, step=40, key="set-b"),
    ):
        append_entry(path, e)
    return path


def newest(history: Path, n: int) -> dict:
    return read_history(history).find(sha(n))


def test_min_top1_fails_only_the_sources_below_and_names_them(history):
    outcomes = [SourceOutcome(Path("a"), RunStatus.SKIPPED, sha(n), None, newest(history, n)) for n in (1, 2, 3)]
    report = gate_run(history, outcomes, method="nnk", min_top1=77.0)
    assert not report.passed
    assert [g.source for g in report.sources] == [
        "checkpoint0010.pth (step 10)",
        "checkpoint0020.pth (step 20)",
        "checkpoint0030.pth (step 30)",
    ]
    assert report.failures == ["nnk top-1 of checkpoint0010.pth (step 10) is 75.00, below --min-top1 77"]
    assert gate_run(history, outcomes, method="nnk", min_top1=75.0).passed


def test_regression_is_measured_against_the_best_other_source_of_the_same_parameter_set(history):
    [latest] = [SourceOutcome(Path("c"), RunStatus.SKIPPED, sha(3), None, newest(history, 3))]
    report = gate_run(history, [latest], method="nnk", max_drop=1.0)
    [gate] = report.sources
    # the best other of set-a is step 20 (80.0), not set-b's 99.0
    assert (gate.best_other, gate.best_other_top1, gate.drop) == ("checkpoint0020.pth (step 20)", 80.0, 2.0)
    assert not report.passed and "2.00 points below the best 80.00" in report.failures[0]
    assert gate_run(history, [latest], method="nnk", max_drop=2.0).passed  # a drop of exactly 2 is allowed
    # knn: 77 against 79, the same drop
    assert gate_run(history, [latest], method="knn", max_drop=1.5).sources[0].drop == 2.0


def test_failed_sources_are_not_gated_and_the_newest_line_of_a_source_wins(history):
    append_entry(history, entry(1, 70.0, step=10, forced=True))  # a --force re-evaluation of source 1
    stale = entry(1, 75.0, step=10)
    outcomes = [
        SourceOutcome(Path("a"), RunStatus.EVALUATED, sha(1), None, stale),
        SourceOutcome(Path("b"), RunStatus.FAILED, sha(2), "cannot read"),
    ]
    report = gate_run(history, outcomes, method="nnk", min_top1=72.0)
    assert [g.sha256 for g in report.sources] == [sha(1)]
    assert report.sources[0].top1 == 70.0  # the history's newest line, not the outcome's copy
    assert len(report.failures) == 1


def test_nothing_to_gate_passes_with_no_sources(history):
    report = gate_run(history, [SourceOutcome(Path("x"), "failed", sha(9), "bad")], method="nnk", min_top1=99)
    assert report.sources == [] and report.passed and report.failures == []


def test_to_dict_is_plain_json_with_the_settings(history):
    outcomes = [SourceOutcome(Path("b"), RunStatus.SKIPPED, sha(2), None, newest(history, 2))]
    report = gate_run(history, outcomes, method="nnk", max_drop=0.5, min_top5=96.0)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc == {
        "method": "nnk",
        "passed": False,
        "fail_on_regression": 0.5,
        "significant": False,
        "alpha": None,
        "min_top1": None,
        "min_top5": 96.0,
        "sources": [
            {
                "source": "checkpoint0020.pth (step 20)",
                "sha256": sha(2),
                "top1": 80.0,
                "top5": 95.0,
                "best_other": "checkpoint0030.pth (step 30)",
                "best_other_top1": 78.0,
                "drop": -2.0,
                "p_value": None,
                "paired": None,
                "failures": ["nnk top-5 of checkpoint0020.pth (step 20) is 95.00, below --min-top5 96"],
            }
        ],
        "notes": [],
        "failures": ["nnk top-5 of checkpoint0020.pth (step 20) is 95.00, below --min-top5 96"],
    }


def test_significant_without_per_query_records_falls_back_to_the_plain_gate_and_says_so(history):
    outcomes = [SourceOutcome(Path("a"), RunStatus.SKIPPED, sha(1), None, newest(history, 1))]
    report = gate_run(history, outcomes, method="nnk", max_drop=1.0, significant=True, alpha=0.01)
    assert not report.passed
    assert report.sources[0].paired == "no per-query results recorded"
    assert report.notes == [
        "checkpoint0010.pth (step 10) and checkpoint0020.pth (step 20) are not paired "
        "(no per-query results recorded): the plain regression gate applies"
    ]
    assert report.to_dict()["alpha"] == 0.01


def test_a_history_already_read_is_used_as_given(history):
    outcomes = [SourceOutcome(Path("a"), RunStatus.SKIPPED, sha(1), None, newest(history, 1))]
    read = read_history(history)
    read.entries[:] = [e for e in read.entries if e["sha256"] != sha(2)]  # without the best source
    report = gate_run(history, outcomes, method="nnk", max_drop=1.0, history=read)
    assert report.sources[0].best_other_top1 == 78.0
