"""Reading the HDF5 files of named arrays that :class:`nnkcli.storage.store.ArrayFileWriter` writes."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from nnkcli.errors import StoreError
from nnkcli.storage.attrs import from_attr


def read_array_file(path: str | os.PathLike, *, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """All root attributes (JSON strings decoded) and every dataset (by its ``a/b`` name) of ``path``.

    Raises
    ------
    StoreError
        The file is missing or not a readable HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{kind} file not found: {path}")
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {key: from_attr(value) for key, value in f.attrs.items()}
            arrays: dict[str, np.ndarray] = {}
            f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    except OSError:
        raise StoreError(f"{path} is not a readable {kind} file (HDF5)",
                         hint=f"give a {kind} file written by nnk") from None
    return attrs, arrays
