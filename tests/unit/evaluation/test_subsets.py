"""``nnkcli.evaluation.subsets``: the seeded class-balanced draw and the subset files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.errors import InputError
from nnkcli.evaluation.subsets import balanced_draw, match_entries, read_subset_file, short_classes


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(-1, 4), min_size=1, max_size=60),
    per_class=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    t=st.integers(0, 5),
)
def test_a_draw_takes_n_rows_of_each_class_or_all_of_them(labels, per_class, seed, t):
    y = np.array(labels)
    rows = balanced_draw(y, per_class, seed, t)
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert (y[rows] >= 0).all()  # unlabelled rows are never drawn
    for c in range(5):
        assert (y[rows] == c).sum() == min(per_class, (y == c).sum())
    assert np.array_equal(rows, balanced_draw(y.copy(), per_class, seed, t))  # a function of its arguments


def test_draws_differ_by_try_and_are_uniform():
    y = np.repeat(np.arange(2), 10)
    firsts = np.zeros(20)
    for t in range(400):
        firsts[balanced_draw(y, 1, 3, t)] += 1
    assert firsts.min() > 5  # every row is drawn sometimes: 400 draws, 20 expected per row
    assert abs(firsts[:10].sum() - 400) < 1e-9 and abs(firsts[10:].sum() - 400) < 1e-9


def test_short_classes_are_named():
    y = np.array([0, 0, 0, 1, 2, 2, -1])
    assert short_classes(y, 2, ["a", "b", "c", "d"]) == {"b": 1}


def test_subset_files_skip_blank_lines_and_comments(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("# SimCLR 1%\n\n n01440764_10026.JPEG \n#x\n12\n")
    assert read_subset_file(f) == ["n01440764_10026.JPEG", "12"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="names no train row"):
        read_subset_file(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="not found"):
        read_subset_file(tmp_path / "missing.txt")


def test_entries_match_ids_exactly_then_by_base_name_then_as_row_indices():
    ids = ["train/n01/n01_1.JPEG", "train/n02/n02_7.JPEG", "5", "train/x/3"]
    entries = ["n02_7.JPEG", "train/n01/n01_1.JPEG", "5", "other/dir/n01_1.JPEG", "1", "3"]
    # "5" is an id (row 2); "1" is a row index; "3" is the base name of row 3's id
    assert match_entries(entries, 4, ids, source="f").tolist() == [1, 0, 2, 0, 1, 3]
    assert match_entries(["0", "3"], 4, None, source="f").tolist() == [0, 3]


def test_unknown_and_ambiguous_entries_are_errors():
    ids = [f"a/img_{i}.png" for i in range(8)] + ["b/img_0.png"]
    with pytest.raises(InputError, match="several sample ids") as exc:
        match_entries(["img_0.png"], 9, ids, source="f")
    assert match_entries(["a/img_0.png"], 9, ids, source="f").tolist() == [0]  # the full id still works
    with pytest.raises(InputError) as exc:
        match_entries([f"x{i}" for i in range(7)] + ["9"], 9, ids, source="f.txt")
    assert exc.value.message == "f.txt: 8 of 8 entries name no train row: 'x0', 'x1', 'x2', 'x3', 'x4' and 3 more"
