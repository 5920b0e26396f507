"""The --k grammar of sweep."""

from __future__ import annotations

import pytest

import nnkcli
from nnkcli.errors import InputError
from nnkcli.evaluation.kspec import parse_k_spec
from nnkcli.evaluation.results import EvaluationResult, SweepResult
from nnkcli.evaluation.sweeps import best_per_method


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("10..200", list(range(10, 201, 10))),
        ("10..205", list(range(10, 201, 10))),
        ("1..9:4", [1, 5, 9]),
        ("5", [5]),
        ("10,20,50,100,200", [10, 20, 50, 100, 200]),
        ("200,10,10,50", [10, 50, 200]),
        ("1,5,10..200:10", [1, 5] + list(range(10, 201, 10))),
        (" 3 , 1..2 ", [1, 2, 3]),
        ("7..7", [7]),
    ],
)
def test_good_specs(spec, expected):
    assert parse_k_spec(spec) == expected


def test_a_dot_dot_b_is_multiples_of_a():
    assert len(parse_k_spec("10..200")) == 20
    assert parse_k_spec("3..10") == [3, 6, 9]


@pytest.mark.parametrize(
    "spec, bad",
    [
        ("10..", "'10..'"),
        ("a", "'a'"),
        ("10,,20", "''"),
        ("0..5", "'0..5'"),
        ("20..10", "'20..10'"),
        ("1..10:0", "'1..10:0'"),
        ("-5", "'-5'"),
        ("0", "'0'"),
        ("1.5", "'1.5'"),
        ("10..20:x", "'10..20:x'"),
    ],
)
def test_bad_specs_name_the_token(spec, bad):
    with pytest.raises(InputError) as err:
        parse_k_spec(spec)
    assert bad in err.value.message


def test_empty_spec():
    with pytest.raises(InputError, match="empty k specification"):
        parse_k_spec("  ")


def test_best_per_method_prefers_smaller_k_on_ties():
    rows = [
        {"method": "nnk", "k": 10, "top1": 80.0, "top5": 95.0},
        {"method": "nnk", "k": 20, "top1": 81.0, "top5": 96.0},
        {"method": "nnk", "k": 30, "top1": 81.0, "top5": 97.0},
        {"method": "knn", "k": 10, "top1": 79.0, "top5": 94.0},
        {"method": "knn", "k": 20, "top1": float("nan"), "top5": 94.0},
    ]
    assert best_per_method(rows) == {
        "nnk": {"k": 20, "top1": 81.0, "top5": 96.0},
        "knn": {"k": 10, "top1": 79.0, "top5": 94.0},
    }


def test_best_per_method_carries_the_intervals_of_the_best_row():
    rows = [
        {"method": "nnk", "k": 10, "top1": 80.0, "top1_ci": [70.0, 88.0], "top5": 95.0, "top5_ci": [90.0, 98.0]},
        {"method": "nnk", "k": 20, "top1": 79.0, "top1_ci": [69.0, 87.0], "top5": 96.0, "top5_ci": [91.0, 99.0]},
    ]
    assert best_per_method(rows) == {
        "nnk": {"k": 10, "top1": 80.0, "top1_ci": [70.0, 88.0], "top5": 95.0, "top5_ci": [90.0, 98.0]}
    }


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
        ("knn", 5, 0.05),
        ("knn", 5, 0.1),
        ("knn", 10, 0.05),
        ("knn", 10, 0.1),
    ]
    assert [r["top1"] for r in rows] == [r["top1"] for r in result.results]
    assert all(r["top1_ci_low"] <= r["top1"] <= r["top1_ci_high"] for r in rows)
