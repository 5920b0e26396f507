"""Label mapping: any integers or strings -> contiguous ids, reconciled by class name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.errors import InputError
from nnkcli.storage.labels import class_counts, map_labels


def test_integer_labels_with_gaps_give_only_the_classes_present():
    # the peer-tool bug: max(label) + 1 = 1000 classes for labels {0, 7, 999}
    m = map_labels([999, 0, 7, 7, 0])
    assert m.classes == ["0", "7", "999"]
    assert m.ids.tolist() == [2, 0, 1, 1, 0]
    assert m.ids.dtype == np.int64


def test_minus_one_is_unlabelled_and_never_a_class():
    m = map_labels(np.array([-1, 3, -1, 5]))
    assert m.classes == ["3", "5"]
    assert m.ids.tolist() == [-1, 0, -1, 1]


def test_all_unlabelled_and_none():
    assert map_labels([-1, -1]).classes == []
    m = map_labels(None, n=3, existing_classes=["a"])
    assert m.ids.tolist() == [-1, -1, -1] and m.classes == ["a"] and m.new_classes == []


def test_string_labels_are_sorted_numbers_first():
    m = map_labels(["dog", "cat", "10", "2", "", "-1", "cat"])
    assert m.classes == ["2", "10", "cat", "dog"]
    assert m.ids.tolist() == [3, 2, 1, 0, -1, -1, 2]


def test_bytes_and_object_labels():
    assert map_labels(np.array([b"b", b"a"])).classes == ["a", "b"]
    m = map_labels(np.array(["x", 3, b"y"], dtype=object))
    assert m.classes == ["3", "x", "y"] and m.ids.tolist() == [1, 0, 2]


def test_integer_valued_floats_and_bools():
    assert map_labels(np.array([2.0, 0.0, -1.0])).ids.tolist() == [1, 0, -1]
    assert map_labels(np.array([True, False])).classes == ["0", "1"]


def test_column_vector_is_accepted():
    assert map_labels(np.array([[1], [0]]), n=2).ids.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0.5, 1.0]), "labels must be integers or strings; got the non-integer value 0.5 at row 0"),
        (np.array([1.0, np.nan]), "labels contain NaN or Inf (first at row 1)"),
        (np.array([0, -2, 1]), "labels contain the negative value -2 at row 1; only -1 (unlabelled) is allowed"),
        (np.zeros((2, 2), dtype=int), "labels must be a 1-D array (n,); got a 2-D array of shape (2, 2)"),
        (np.array([1 + 2j]), "labels have unsupported dtype complex128; expected integers or strings"),
        (np.array([1.5, None], dtype=object), "labels must be integers or strings; got float 1.5 at row 0"),
    ],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(InputError) as err:
        map_labels(labels)
    assert str(err.value) == message


def test_length_mismatch():
    with pytest.raises(InputError, match=r"^features have 3 rows but labels have 2$"):
        map_labels([0, 1], n=3)


def test_class_names_with_integer_labels():
    m = map_labels([2, 0, -1], class_names=["a", "b", "c"])
    assert m.classes == ["a", "b", "c"]  # all names kept, even unused "b"
    assert m.ids.tolist() == [2, 0, -1]
    with pytest.raises(InputError, match=r"^label 3 at row 1 is outside the 3 class names$"):
        map_labels([0, 3], class_names=["a", "b", "c"])


def test_class_names_fix_the_order_of_string_labels():
    m = map_labels(["c", "a"], class_names=["c", "b", "a"])
    assert m.classes == ["c", "b", "a"] and m.ids.tolist() == [0, 2]
    with pytest.raises(InputError, match=r"^label 'z' is not one of the 3 class names$"):
        map_labels(["z"], class_names=["c", "b", "a"])


def test_duplicate_class_names_are_refused():
    with pytest.raises(InputError, match="contains the class name 'a' twice"):
        map_labels([0], class_names=["a", "a"])


def test_existing_classes_keep_their_ids_and_new_ones_are_appended():
    m = map_labels(["dog", "bird", "cat"], existing_classes=["cat", "dog"])
    assert m.classes == ["cat", "dog", "bird"]
    assert m.new_classes == ["bird"]
    assert m.ids.tolist() == [1, 2, 0]


def test_no_overlap_with_existing_classes_warns(caplog):
    import logging

    logger = logging.getLogger("nnkcli")
    logger.propagate = True  # the CLI may have switched propagation off
    with caplog.at_level(logging.WARNING, logger="nnkcli"):
        m = map_labels([0, 1], existing_classes=["cat", "dog"])
    assert m.classes == ["cat", "dog", "0", "1"]
    assert "none of the 2 label names" in caplog.text


def test_class_counts():
    counts, unlabelled = class_counts(np.array([0, 2, 2, -1]), 4)
    assert counts.tolist() == [1, 0, 2, 0] and unlabelled == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=-1, max_value=40), min_size=1, max_size=60),
    st.lists(st.sampled_from([str(i) for i in range(0, 45, 3)]), max_size=6, unique=True),
)
def test_mapping_is_a_name_preserving_bijection(raw, existing):
    m = map_labels(np.array(raw), existing_classes=existing)
    labelled = [i for i, v in enumerate(raw) if v != -1]
    # every labelled row's class name is its raw label; unlabelled rows stay -1
    assert all(m.classes[m.ids[i]] == str(raw[i]) for i in labelled)
    assert all(m.ids[i] == -1 for i in range(len(raw)) if raw[i] == -1)
    # existing ids unchanged, names unique, new names exactly the unseen labels
    assert m.classes[: len(existing)] == existing
    assert len(set(m.classes)) == len(m.classes)
    assert set(m.new_classes) == {str(raw[i]) for i in labelled} - set(existing)
