"""The shared HDF5 habits: chunk sizes, and a file written in a failing block is closed, not kept open."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nnkcli.storage.hdf5 import HDF5_CHUNK_BYTES, chunk_rows, h5_for_writing


@pytest.mark.parametrize(
    ("n", "row_items", "itemsize"), [(0, 8, 4), (1, 8, 4), (10**6, 384, 4), (10**6, 1, 8), (5, 10**7, 4), (100, 0, 4)]
)
def test_chunk_rows_bounds_a_chunk_to_a_mebibyte(n, row_items, itemsize):
    rows = chunk_rows(n, row_items, itemsize)
    assert rows >= 1
    assert rows <= max(n, 1)
    # a chunk holds at most HDF5_CHUNK_BYTES, unless one row alone is larger (then it is one row)
    assert rows * row_items * itemsize <= HDF5_CHUNK_BYTES or rows == 1
    if n * row_items * itemsize > HDF5_CHUNK_BYTES and row_items * itemsize <= HDF5_CHUNK_BYTES:
        assert (rows + 1) * row_items * itemsize > HDF5_CHUNK_BYTES  # as large as allowed


def test_h5_for_writing_flushes_or_closes_a_failed_file(tmp_path):
    tmp = tmp_path / "f.h5"
    with h5_for_writing(tmp) as h5:
        h5.create_dataset("x", data=np.arange(5))
    with h5py.File(tmp, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(5))
    with pytest.raises(RuntimeError), h5_for_writing(tmp) as h5:
        h5.create_dataset("x", data=np.arange(1000))
        raise RuntimeError("failed while writing")
    assert not h5.id.valid  # closed (after being emptied), for the caller to delete
