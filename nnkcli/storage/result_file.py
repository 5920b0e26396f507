"""Reading the HDF5 result files nnkcli writes (``classify --out PRED.h5``), block by block.

The writer is ``nnkcli.storage.store.ArrayFileWriter``; this module is its reading side, so
that h5py stays inside the storage package. Nothing is loaded whole: callers read row
ranges of one dataset at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from nnkcli.errors import StoreError
from nnkcli.storage.attrs import from_attr


class ArrayFileReader:
    """A read-only HDF5 file of named row-aligned arrays.

    Parameters
    ----------
    path : path-like
    kind : str
        What the file should hold (its root attribute ``nnk_format``), e.g. ``"predictions"``.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str):
        self.path = Path(path)
        self.kind = kind
        if not self.path.exists():
            raise StoreError(f"{kind} file not found: {self.path}")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder", hint=f"give the path of a {kind} .h5 file")
        try:
            self._h5 = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: not a readable HDF5 file ({exc})") from None
        fmt = self._h5.attrs.get("nnk_format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != kind:
            self._h5.close()
            raise StoreError(f"{self.path} is not an nnkcli {kind} file (nnk_format={fmt!r})",
                             hint=f"write one with 'nnk classify STORE --out {self.path.name}'")

    @property
    def attrs(self) -> dict:
        """Root attributes; strings holding JSON objects or lists are decoded."""
        return {key: from_attr(value) for key, value in self._h5.attrs.items()}

    def has(self, name: str) -> bool:
        return name in self._h5

    def shape(self, name: str) -> tuple[int, ...]:
        self._need(name)
        return tuple(self._h5[name].shape)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop`` of dataset ``name``."""
        self._need(name)
        try:
            return self._h5[name][start:stop]
        except OSError as exc:
            raise StoreError(f"cannot read {name} from {self.path}: {exc}",
                             hint="the file is damaged; write it again") from None

    def _need(self, name: str) -> None:
        if name not in self._h5:
            raise StoreError(f"{self.path} has no dataset '{name}'",
                             hint=f"it is not a complete {self.kind} file; write it again")

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> ArrayFileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
