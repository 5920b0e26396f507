"""nnkcli.tracking.quality_entries and the quality gate of source_gates, from Python on small histories."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from nnkcli.tracking.history import append_entry, parse_history, read_history
from nnkcli.tracking.quality_entries import QualityOptions, quality_metrics_of, quality_options, quality_value
from nnkcli.tracking.runner import RunStatus, SourceOutcome, evaluate_sources
from nnkcli.tracking.source_gates import check_source_gates, gate_run
from nnkcli.tracking.views import history_rows, history_view


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def entry(n: int, *, step: int, quality: dict | None = None, nnk: float | None = None) -> dict:
    e = {
        "source": f"/runs/epoch_{step}.h5",
        "sha256": sha(n),
        "step": step,
        "params_key": "set-a",
        "best": {} if nnk is None else {"nnk": {"k": 10, "top1": nnk, "top5": 99.0}},
        "results": [],
    }
    if quality is not None:
        e.update(quality=quality, quality_split="val", quality_k=50)
    return e


class FakeResult:
    def __init__(self, summary):
        self.summary = summary

    def to_dict(self):
        return {"summary": self.summary}


def test_quality_options_defaults_and_checks():
    assert quality_options(True) == QualityOptions(k=50, queries=None, seed=0)
    assert quality_options(False) is None and quality_options(None) is None
    assert QualityOptions(k=7).parameters("val") == {"split": "val", "k": 7, "queries": None, "seed": 0}
    for bad in ({"k": 0}, {"k": True}, {"queries": 0}):
        with pytest.raises(Exception, match="must be an integer >= 1"):
            QualityOptions(**bad)
    with pytest.raises(TypeError):
        quality_options("yes")


def test_values_read_back_only_when_finite_numbers():
    e = entry(1, step=1, quality={"rankme": 3, "alpha_req": None, "nnk_interpolation_error": True, "x": 1e400})
    assert quality_value(e, "rankme") == 3.0
    assert [quality_value(e, m) for m in ("alpha_req", "nnk_interpolation_error", "x", "absent")] == [None] * 4
    assert quality_value(entry(2, step=2), "rankme") is None
    assert quality_metrics_of([e, entry(3, step=3, quality={"loo_knn_top1": 50.0, "rankme": 1.0})]) == [
        "rankme",
        "loo_knn_top1",
    ]


def test_an_old_history_without_quality_reads_and_shows_as_before():
    old = {"schema_version": 1, **entry(1, step=1, nnk=80.0)}
    history = parse_history([json.dumps(old)])
    assert history.malformed == []
    view = history_view(history)
    assert view.quality_metrics == []
    assert "quality_metrics" not in view.to_dict()
    assert set(view.rows[0]) == {
        "step", "source", "sha256", "evaluated_at", "nnk_top1", "nnk_top1_ci", "nnk_k", "nnk_delta_prev",
        "nnk_delta_best", "best",
    }  # fmt: skip


def test_an_entry_with_quality_only_parses_and_rows_mix():
    lines = [json.dumps({"schema_version": 1, **e}) for e in (
        entry(1, step=1, nnk=80.0),
        entry(2, step=2, quality={"rankme": 9.0}),
    )]  # fmt: skip
    history = parse_history(lines)
    assert history.malformed == []
    rows = history_rows(history.entries)
    assert [(r["nnk_top1"], r["rankme"], r["best"]) for r in rows] == [(80.0, None, "nnk"), (None, 9.0, "")]


@pytest.fixture
def history(tmp_path) -> Path:
    path = tmp_path / "history.jsonl"
    append_entry(path, entry(1, step=1, quality={"rankme": 30.0, "nnk_interpolation_error": 0.25}, nnk=80.0))
    append_entry(path, entry(2, step=2, quality={"rankme": 40.0, "nnk_interpolation_error": 0.2}))
    append_entry(path, entry(3, step=3, quality={"rankme": 35.0, "nnk_interpolation_error": 0.4}, nnk=70.0))
    return path


def outcomes_of(history: Path, *ns: int) -> list[SourceOutcome]:
    found = read_history(history)
    return [SourceOutcome(Path(f"{n}"), RunStatus.SKIPPED, sha(n), None, found.find(sha(n))) for n in ns]


def test_gate_run_on_rankme_against_the_best_other(history):
    report = gate_run(history, outcomes_of(history, 3), method="nnk", max_drop=4.0, metric="rankme")
    [gate] = report.sources
    assert (gate.metric, gate.value, gate.best_other, gate.best_other_value, gate.drop) == (
        "rankme",
        35.0,
        "epoch_2.h5 (step 2)",
        40.0,
        5.0,
    )
    assert report.failures == [
        "regression: rankme of epoch_3.h5 (step 3) is 35, 5 below the best 40 of epoch_2.h5 (step 2) "
        "(higher is better; allowed: 4)"
    ]
    assert gate_run(history, outcomes_of(history, 3), method="nnk", max_drop=5.0, metric="rankme").passed
    doc = report.to_dict()
    assert doc["gate_metric"] == "rankme" and doc["sources"][0]["value"] == 35.0


def test_gate_run_on_the_interpolation_error_takes_the_lowest_as_best(history):
    report = gate_run(history, outcomes_of(history, 1, 3), method="nnk", max_drop=0.1, metric="nnk_interpolation_error")
    assert [(g.best_other_value, g.drop) for g in report.sources] == [(0.2, 0.05), (0.2, 0.2)]
    assert report.failures == [
        "regression: nnk_interpolation_error of epoch_3.h5 (step 3) is 0.4, 0.2 above the best 0.2 of "
        "epoch_2.h5 (step 2) (lower is better; allowed: 0.1)"
    ]


def test_the_metric_replaces_the_top1_regression_but_not_the_floors(history):
    # epoch 3's top-1 is 10 points below epoch 1's: not gated with a metric; --min-top1 still is
    report = gate_run(history, outcomes_of(history, 3), method="nnk", max_drop=100, metric="rankme", min_top1=75)
    assert report.failures == ["nnk top-1 of epoch_3.h5 (step 3) is 70.00, below --min-top1 75"]
    # an entry without a top-1 (no labels) is gated on the metric, its floors noted as not checked
    report = gate_run(history, outcomes_of(history, 2), method="nnk", max_drop=0, metric="rankme", min_top1=75)
    assert report.passed
    assert report.notes == ["epoch_2.h5 (step 2) has no nnk result: --min-top1/--min-top5 not checked"]


def test_the_accuracy_gate_is_unchanged_without_a_metric(history):
    report = gate_run(history, outcomes_of(history, 3), method="nnk", max_drop=1.0)
    assert "metric" not in report.sources[0].to_dict() and "gate_metric" not in report.to_dict()
    assert report.failures == [
        "regression: nnk top-1 of epoch_3.h5 (step 3) is 70.00, 10.00 points below the best 80.00 of "
        "epoch_1.h5 (step 1) (allowed: 1)"
    ]


def test_bad_metric_or_significant_is_refused():
    with pytest.raises(ValueError, match="gate metric must be one of rankme"):
        check_source_gates([], [], method="nnk", metric="alpha_req")
    with pytest.raises(ValueError, match="not a quality metric"):
        check_source_gates([], [], method="nnk", metric="rankme", significant=True)


def test_evaluate_sources_with_quality_true_records_an_unlabelled_store(tmp_path, monkeypatch):
    from nnkcli.storage.store import write_split

    seen = {}

    def quality(store_path, **kwargs):
        seen.update(kwargs)
        return FakeResult({"rankme": 2.5, "alpha_req": None, "nnk_interpolation_error": 0.5})

    monkeypatch.setattr("nnkcli.evaluation.quality.quality", quality)
    store = tmp_path / "s.h5"
    write_split(store, "val", np.ones((5, 3), dtype=np.float32), source="test")
    [outcome] = evaluate_sources([store], tmp_path / "h.jsonl", quality=True)
    assert outcome.status is RunStatus.EVALUATED, outcome.reason
    assert outcome.entry["quality"]["rankme"] == 2.5 and outcome.to_dict()["quality"]["rankme"] == 2.5
    assert (seen["split"], seen["k"]) == ("val", 50)
    # the quality run failing is the source failing: not recorded, retried next time
    monkeypatch.setattr("nnkcli.evaluation.quality.quality", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    [outcome] = evaluate_sources([store], tmp_path / "h.jsonl", quality=QualityOptions(k=3), force=True)
    assert outcome.status is RunStatus.FAILED and outcome.reason == "RuntimeError: x"
