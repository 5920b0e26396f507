"""The --k grammar of sweep."""

from __future__ import annotations

import pytest

from nnkcli.errors import InputError
from nnkcli.evaluation.sweeps import best_per_method, parse_k_spec


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
    [("10..", "'10..'"), ("a", "'a'"), ("10,,20", "''"), ("0..5", "'0..5'"), ("20..10", "'20..10'"),
     ("1..10:0", "'1..10:0'"), ("-5", "'-5'"), ("0", "'0'"), ("1.5", "'1.5'"), ("10..20:x", "'10..20:x'")],
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
    assert best_per_method(rows) == {"nnk": {"k": 20, "top1": 81.0, "top5": 96.0},
                                     "knn": {"k": 10, "top1": 79.0, "top5": 94.0}}


def test_best_per_method_carries_the_intervals_of_the_best_row():
    rows = [{"method": "nnk", "k": 10, "top1": 80.0, "top1_ci": [70.0, 88.0], "top5": 95.0, "top5_ci": [90.0, 98.0]},
            {"method": "nnk", "k": 20, "top1": 79.0, "top1_ci": [69.0, 87.0], "top5": 96.0, "top5_ci": [91.0, 99.0]}]
    assert best_per_method(rows) == {"nnk": {"k": 10, "top1": 80.0, "top1_ci": [70.0, 88.0], "top5": 95.0,
                                             "top5_ci": [90.0, 98.0]}}
