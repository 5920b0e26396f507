"""nnkcli.evaluation.results: the one kind of result classify, sweep and merge return."""

from __future__ import annotations

import sys
import types

import pytest

from nnkcli.errors import MissingDependencyError
from nnkcli.evaluation.results import ClassifyResult, EvaluationResult, SweepResult

DOC = {
    "store": "s.h5",
    "results": [
        {
            "method": "nnk",
            "k": 10,
            "solver": "exact",
            "top1": 90.0,
            "top1_ci": [85.5, 93.25],
            "top5": 99.0,
            "top5_ci": [97.0, 99.5],
            "n_queries": 60,
            "support_mean": 4.5,
            "per_class": {"a": {"n": 30, "top1": 90.0, "top1_ci": [80.0, 95.0]}},
        },
        {
            "method": "knn",
            "k": 10,
            "temperature": 0.07,
            "top1": 88.0,
            "top1_ci": [83.0, 92.0],
            "top5": 98.0,
            "top5_ci": [96.0, 99.0],
            "n_queries": 60,
        },
    ],
}


def test_rows_are_flat_with_the_interval_ends_and_no_nested_values():
    assert EvaluationResult(DOC).rows() == [
        {
            "method": "nnk",
            "k": 10,
            "temperature": None,
            "solver": "exact",
            "top1": 90.0,
            "top1_ci_low": 85.5,
            "top1_ci_high": 93.25,
            "top5": 99.0,
            "top5_ci_low": 97.0,
            "top5_ci_high": 99.5,
            "n_queries": 60,
            "support_mean": 4.5,
        },
        {
            "method": "knn",
            "k": 10,
            "temperature": 0.07,
            "top1": 88.0,
            "top1_ci_low": 83.0,
            "top1_ci_high": 92.0,
            "top5": 98.0,
            "top5_ci_low": 96.0,
            "top5_ci_high": 99.0,
            "n_queries": 60,
        },
    ]


def test_a_result_reads_as_its_document():
    result = ClassifyResult(DOC)
    assert result.to_dict() is DOC
    assert result["results"] is DOC["results"] and result.results is DOC["results"]
    assert dict(result) == DOC and result == DOC and "store" in result and result.get("best") is None
    with pytest.raises(TypeError):
        result["store"] = "other"  # read-only: the document is changed through to_dict()
    sweep = SweepResult({**DOC, "best": {"nnk": {"k": 10}}}, best_hits={"nnk": (10, None)})
    assert sweep.best == {"nnk": {"k": 10}} and sweep.best_hits == {"nnk": (10, None)}
    assert isinstance(sweep, EvaluationResult) and isinstance(result, EvaluationResult)
    assert "2 result rows" in repr(sweep)


def test_to_pandas_without_pandas_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(MissingDependencyError) as info:
        EvaluationResult(DOC).to_pandas()
    assert info.value.extra == "pandas"
    assert "to_pandas() needs the optional 'pandas' extra" in info.value.message
    assert info.value.hint == 'pip install "nnkcli[pandas]"'


def test_to_pandas_is_a_frame_of_the_rows(monkeypatch):
    fake = types.ModuleType("pandas")
    fake.DataFrame = lambda rows: ("frame", rows)
    monkeypatch.setitem(sys.modules, "pandas", fake)
    result = EvaluationResult(DOC)
    assert result.to_pandas() == ("frame", result.rows())
