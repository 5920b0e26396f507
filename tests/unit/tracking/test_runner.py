"""nnkcli.tracking.runner: the run statuses (the bookkeeping of ``evaluate_sources`` is tested in
tests/unit/test_evaluate.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from nnkcli.tracking.runner import RunStatus, SourceOutcome, status_counts


def test_run_statuses_are_the_words_of_the_documents():
    assert [s.value for s in RunStatus] == ["evaluated", "skipped", "failed"]
    assert RunStatus.EVALUATED == "evaluated" and isinstance(RunStatus.FAILED, str)
    assert RunStatus("skipped") is RunStatus.SKIPPED
    # printed, formatted, in JSON and in CSV: the word, never "RunStatus.SKIPPED"
    assert str(RunStatus.SKIPPED) == f"{RunStatus.SKIPPED}" == "skipped"
    assert json.dumps({RunStatus.FAILED: RunStatus.FAILED}) == '{"failed": "failed"}'
    out = io.StringIO()
    csv.writer(out).writerow([RunStatus.EVALUATED])
    assert out.getvalue().strip() == "evaluated"


def test_an_outcome_holds_a_member_and_documents_the_word():
    outcome = SourceOutcome(Path("a.h5"), "failed", None, "cannot read")
    assert outcome.status is RunStatus.FAILED
    doc = outcome.to_dict()
    assert doc["status"] == "failed" and type(doc["status"]) is str
    with pytest.raises(ValueError):
        SourceOutcome(Path("a.h5"), "done")


def test_status_counts_lists_every_status():
    outcomes = [SourceOutcome(Path(n), s) for n, s in
                (("a", RunStatus.SKIPPED), ("b", RunStatus.FAILED), ("c", RunStatus.SKIPPED))]
    counts = status_counts(outcomes)
    assert counts == {"evaluated": 0, "skipped": 2, "failed": 1}
    assert all(type(k) is str for k in counts)
    assert status_counts(iter(outcomes)) == counts  # any iterable
