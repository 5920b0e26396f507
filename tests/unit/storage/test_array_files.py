"""Files of named arrays (prediction and partial-result files): the writer commits atomically, the
readers give back exactly what was written, and a wrong or damaged file is refused by name."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nnkcli.errors import StoreError
from nnkcli.storage.array_files import ArrayFileReader, ArrayFileWriter, read_array_file


def _write(path, kind="predictions"):
    """A file of two datasets written in blocks of 4 rows; returns what it holds."""
    labels = np.arange(10, dtype=np.int64)[::-1].copy()
    scores = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with ArrayFileWriter(path, kind=kind) as writer:
        writer.create("labels", labels.shape, labels.dtype)
        writer.create("knn/scores", scores.shape, scores.dtype)
        writer.check_space()
        for start in (0, 4, 8):
            writer.write("labels", start, labels[start : start + 4])
            writer.write("knn/scores", start, scores[start : start + 4])
        writer.set_attrs({"nnk_format": kind, "k": 5, "methods": ["knn"], "skipped": None})
    return labels, scores


def test_array_file_writer_commits_atomically(tmp_path):
    out = tmp_path / "pred.h5"
    scores = np.arange(30, dtype=np.float32).reshape(10, 3)
    with ArrayFileWriter(out, kind="predictions") as writer:
        writer.create("labels", (10,), np.int64)
        writer.create("knn/scores", (10, 3), np.float32)
        for start in (0, 4, 8):
            writer.write("labels", start, np.arange(start, min(10, start + 4)))
            writer.write("knn/scores", start, scores[start : start + 4])
        writer.set_attrs({"nnk_format": "predictions", "k": 5, "methods": ["knn"]})
        assert not out.exists()  # nothing visible before the commit
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["labels"][()], np.arange(10))
        np.testing.assert_array_equal(f["knn/scores"][()], scores)
        assert f.attrs["k"] == 5 and f.attrs["methods"] == '["knn"]'
    before = out.read_bytes()
    with pytest.raises(RuntimeError), ArrayFileWriter(out, kind="predictions") as writer:
        writer.create("labels", (3,), np.int64)
        raise RuntimeError("interrupted")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5"]


def test_an_aborted_set_up_leaves_nothing(tmp_path):
    out = tmp_path / "pred.h5"
    writer = ArrayFileWriter(out, kind="predictions")
    with pytest.raises(KeyError), writer.aborted_on_failure():
        writer.create("labels", (4,), np.int64)
        raise KeyError("stopped while declaring datasets")
    assert sorted(tmp_path.iterdir()) == []


def test_writer_refuses_a_missing_folder_and_a_folder(tmp_path):
    with pytest.raises(StoreError, match="folder not found for the predictions file"):
        ArrayFileWriter(tmp_path / "no" / "pred.h5", kind="predictions")
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        ArrayFileWriter(tmp_path / "d.h5", kind="predictions")


def test_reader_reads_back_row_ranges_and_decoded_attrs(tmp_path):
    labels, scores = _write(tmp_path / "pred.h5")
    with ArrayFileReader(tmp_path / "pred.h5", kind="predictions") as reader:
        assert reader.attrs == {"nnk_format": "predictions", "k": 5, "methods": ["knn"]}
        assert reader.has("knn/scores") and not reader.has("nnk/scores")
        assert reader.shape("knn/scores") == (10, 3)
        np.testing.assert_array_equal(reader.read("labels", 3, 7), labels[3:7])
        np.testing.assert_array_equal(reader.read("knn/scores", 8, 10), scores[8:10])
        with pytest.raises(StoreError, match="has no dataset 'nnk/scores'"):
            reader.read("nnk/scores", 0, 1)


def test_reader_refuses_another_kind_a_missing_file_and_a_non_hdf5_file(tmp_path):
    _write(tmp_path / "part.h5", kind="partial results")
    with pytest.raises(StoreError, match=r"is not an nnkcli predictions file \(nnk_format='partial results'\)"):
        ArrayFileReader(tmp_path / "part.h5", kind="predictions")
    with pytest.raises(StoreError, match="predictions file not found"):
        ArrayFileReader(tmp_path / "none.h5", kind="predictions")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        ArrayFileReader(tmp_path / "text.h5", kind="predictions")


def test_read_array_file_loads_every_dataset(tmp_path):
    labels, scores = _write(tmp_path / "part.h5", kind="partial results")
    attrs, arrays = read_array_file(tmp_path / "part.h5", kind="partial results")
    assert attrs == {"nnk_format": "partial results", "k": 5, "methods": ["knn"]}
    assert sorted(arrays) == ["knn/scores", "labels"]
    np.testing.assert_array_equal(arrays["labels"], labels)
    np.testing.assert_array_equal(arrays["knn/scores"], scores)
    with pytest.raises(StoreError, match="partial results file not found"):
        read_array_file(tmp_path / "none.h5", kind="partial results")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="is not a readable partial results file"):
        read_array_file(tmp_path / "text.h5", kind="partial results")


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"chunks": (4,)}, None),
        ({"chunks": (4,), "compression": "gzip"}, None),
        ({}, None),  # contiguous
        ({"chunks": (4,), "empty": True}, "declares 10 rows but holds the data of at most 0"),
        ({"empty": True}, "declares 10 rows but holds the data of at most 0"),
        ({"chunks": (4,), "rows": 5}, "declares 10 rows but holds the data of at most 8"),
    ],
)
def test_require_checks_declared_rows_against_the_data_present(tmp_path, layout, expected):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f.attrs["nnk_format"] = "predictions"
        empty, rows = layout.pop("empty", False), layout.pop("rows", 10)
        d = f.create_dataset("labels", shape=(10,), dtype=np.int64, **layout)
        if not empty:
            d[:rows] = np.arange(rows)
    with ArrayFileReader(path, kind="predictions") as r:
        if expected is None:
            assert r.require("labels", (10,)) == np.dtype(np.int64)
        else:
            with pytest.raises(StoreError, match=expected):
                r.require("labels", (10,))


def test_require_checks_shape_and_dtype(tmp_path):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f.attrs["nnk_format"] = "predictions"
        f["top5"] = np.zeros((3, 5), np.float64)
        f["group/x"] = np.zeros(3, np.int64)
    with ArrayFileReader(path, kind="predictions") as r:
        with pytest.raises(StoreError, match=r"dataset 'top5' has shape \(3, 5\), expected \(3, 4\)"):
            r.require("top5", (3, 4))
        with pytest.raises(StoreError, match=r"dataset 'top5' has shape \(3, 5\), expected \(\*,\)"):
            r.require("top5", (None,))
        with pytest.raises(StoreError, match="dataset 'top5' holds float64 values, expected integers"):
            r.require("top5", (3, 5))
        with pytest.raises(StoreError, match="'group' is a group, not a dataset"):
            r.require("group", (3,))


def test_a_truncated_file_is_named_as_such(tmp_path):
    from nnkcli.storage.array_files import nnk_format_of

    path = tmp_path / "p.h5"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[:200])
    with pytest.raises(
        StoreError, match=rf"cannot read {path}: the file is truncated \(200 bytes, HDF5 expects at least"
    ):
        ArrayFileReader(path, kind="predictions")
    with pytest.raises(StoreError, match="the file is truncated"):
        nnk_format_of(path)
