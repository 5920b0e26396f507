"""nnkcli.evaluation.classification: classify's keyword k, its result object, its document built once."""

from __future__ import annotations

import json

import pytest

from nnkcli.errors import InputError
from nnkcli.evaluation.classification import classify
from nnkcli.evaluation.results import ClassifyResult
from nnkcli.numerics.metrics import Accumulator
from nnkcli.plain import jsonable


def _without_timing(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key not in ("timing", "schema_version")}


def test_classify_takes_k_as_an_int_a_spec_or_a_one_item_list(store):
    ref = classify(store, k=10).to_dict()
    assert [(r["method"], r["k"]) for r in ref["results"]] == [("nnk", 10), ("knn", 10)]
    for k in ("10", [10]):
        assert classify(store, k=k).to_dict()["results"] == ref["results"]
    with pytest.raises(ValueError, match=r"^k: classify evaluates one k \(got \[10, 20\]\)"):
        classify(store, k=[10, 20])
    with pytest.raises(TypeError, match=r"k_values given twice \(as k and as k_values\)"):
        classify(store, k=10, k_values=10)


def test_the_result_is_what_the_command_line_prints(store, runner):
    from nnkcli.cli import cli

    result = classify(store, k=10)
    assert isinstance(result, ClassifyResult)
    printed = runner.invoke(cli, ["classify", str(store), "--k", "10", "--format", "json"])
    assert printed.exit_code == 0, printed.output
    assert _without_timing(json.loads(printed.stdout)) == _without_timing(jsonable(result.to_dict()))
    rows = result.rows()
    assert [(r["method"], r["k"], r["temperature"]) for r in rows] == [("nnk", 10, None), ("knn", 10, 0.07)]
    for row, doc_row in zip(rows, result.to_dict()["results"]):
        assert (row["top1"], row["top5"]) == (doc_row["top1"], doc_row["top5"])
        assert [row["top1_ci_low"], row["top1_ci_high"]] == doc_row["top1_ci"]
        assert 0.0 <= row["top1"] <= 100.0  # a percentage


def test_with_a_predictions_file_the_document_is_built_once(store, tmp_path, monkeypatch):
    """Each row's intervals (a bootstrap for the balanced accuracy) are computed once per row, not once
    for the printed document and again for the file's attributes."""
    from nnkcli.evaluation.predictions import PredictionFile

    calls = []
    real = Accumulator.result

    def counted(self, *args, **kwargs):
        calls.append((self.method, self.k))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accumulator, "result", counted)
    doc = classify(store, k=5, predictions_path=tmp_path / "p.h5", threads=1).to_dict()
    assert sorted(calls) == [("knn", 5), ("nnk", 5)]
    assert doc["predictions_path"] == str(tmp_path / "p.h5")
    with PredictionFile(tmp_path / "p.h5") as pred:  # the file keeps that document's parameters
        assert pred.attrs["parameters"] == jsonable(doc["parameters"]) and pred.k == 5
