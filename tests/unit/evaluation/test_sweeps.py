"""nnkcli.sweep takes k (an int, a list or a spec), as classify and evaluate_features do."""

from __future__ import annotations

import pytest

import nnkcli
from nnkcli.evaluation.results import EvaluationResult, SweepResult


def _without_timing(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key != "timing"}


def test_sweep_takes_k_as_a_list_a_spec_or_an_int(store):
    by_k = nnkcli.sweep(store, k=[10, 20])
    assert isinstance(by_k, SweepResult) and isinstance(by_k, EvaluationResult)
    by_field = nnkcli.sweep(store, k_values=[10, 20])
    assert _without_timing(by_k.to_dict()) == _without_timing(by_field.to_dict())
    assert by_k.to_dict()["k_values"] == [10, 20]
    assert _without_timing(nnkcli.sweep(store, k="10..20").to_dict()) == _without_timing(by_k.to_dict())
    assert nnkcli.sweep(store, k=20).to_dict()["k_values"] == [20]
    with pytest.raises(TypeError, match=r"k_values given twice \(as k and as k_values\)"):
        nnkcli.sweep(store, k=[10], k_values=[10])


def test_sweep_rows_are_one_per_method_and_k(store):
    result = nnkcli.sweep(store, k=[5, 10], temperature=(0.05, 0.1), methods="knn")
    rows = result.rows()
    assert [(r["method"], r["k"], r["temperature"]) for r in rows] == [
        ("knn", 5, 0.05), ("knn", 5, 0.1), ("knn", 10, 0.05), ("knn", 10, 0.1)]
    assert [r["top1"] for r in rows] == [r["top1"] for r in result.results]
    assert all(r["top1_ci_low"] <= r["top1"] <= r["top1_ci_high"] for r in rows)
