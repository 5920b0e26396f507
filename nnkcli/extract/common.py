"""What the importers share: the imported-features record, path checks, array views, file rows.

Kept apart from the package's ``__init__`` (the dispatcher that imports the importers)
so that the importers import this module and never their own package: no import circle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.checks import tensor_to_numpy

#: file names of VISSL's extract_features output (the dispatcher detects them, the importer reads them)
_VISSL_FILE = re.compile(r"^(rank\d+(?:_chunk\d+)?)_([A-Za-z0-9]+)_(.+)_features\.npy$")


@dataclass
class ImportedFeatures:
    """Features read from some source, not yet stored.

    Attributes
    ----------
    features : array-like, shape (n, d)
        Sliceable by rows; usually read from the file block by block, so nothing is loaded yet.
    labels : array-like, shape (n,), or None
        Raw labels (integers or strings), mapped to class ids when stored.
    ids : list of str, or None
        Sample ids (VISSL dataset indices ...).
    class_names : list of str, or None
        Names for integer labels, when the source has them.
    source : str
        Provenance string stored in the split's ``source`` attribute.
    attrs : dict
        More provenance pairs (``source_format``, ``vissl_layer`` ...).
    """

    features: object
    labels: object = None
    ids: list[str] | None = None
    class_names: list[str] | None = None
    source: str = ""
    attrs: dict = field(default_factory=dict)


def check_input_path(path: str | os.PathLike, what: str = "input", option: str = "--from") -> Path:
    """``path`` as a Path if it exists and is readable; InputError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}", hint=f"check the {option} path")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied", hint="check the file's permissions")
    return path


def as_numpy(values) -> np.ndarray:
    """A numpy view of a torch tensor or an array-like (bfloat16 tensors become float32)."""
    return np.asarray(tensor_to_numpy(values))


class FileRows:
    """A C-ordered array stored raw at ``offset`` in a file, read by row slices.

    Parameters
    ----------
    path : Path
    offset : int
        Byte offset of the first element.
    shape : tuple of int
        The array's shape; rows are the first axis.
    dtype : np.dtype

    ``rows[a:b]`` returns a numpy array of shape (b - a, *shape[1:]); ``np.asarray(rows)``
    reads everything (for small arrays and tests).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = Path(path), int(offset), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self._row_items = int(np.prod(self.shape[1:], dtype=np.int64)) if self.ndim > 1 else 1

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __repr__(self) -> str:
        return f"<FileRows {self.path.name}: {self.shape} {self.dtype}>"

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("FileRows supports contiguous row slices only")
        start, stop, _ = index.indices(len(self))
        rows = max(0, stop - start)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self._row_items * self.dtype.itemsize)
            data = np.fromfile(fh, dtype=self.dtype, count=rows * self._row_items)
        if data.size != rows * self._row_items:
            raise InputError(f"{self.path} is truncated", hint="the file is shorter than its header says")
        return data.reshape((rows,) + self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def flat_rows(self) -> FileRows:
        """The same data seen as (n, prod(shape[1:])) rows."""
        return FileRows(self.path, self.offset, (self.shape[0], self._row_items), self.dtype)
