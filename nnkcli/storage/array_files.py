"""Files of named arrays (not feature stores): result files such as ``classify --out PRED.h5``.

One HDF5 file holds row-aligned datasets by ``a/b`` names and its attributes at the root
(``nnk_format`` says what it holds: ``"predictions"``, ``"partial results"``).
:class:`ArrayFileWriter` fills one block by block and commits it atomically;
:class:`ArrayFileReader` reads row ranges of one dataset at a time (nothing is loaded
whole); :func:`read_array_file` loads a small one whole.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from nnkcli.errors import StoreError
from nnkcli.storage.atomic import (
    check_can_create,
    check_free_space,
    discard_temp,
    forget_temp,
    fsync_dir,
    fsync_file,
    output_error,
    real_path,
    remove_dead_temps,
    temp_path_for,
)
from nnkcli.storage.attrs import from_attr, to_attr
from nnkcli.storage.hdf5 import chunk_rows, discard_h5, open_h5, reserve


class ArrayFileWriter:
    """An HDF5 file of named arrays (not a feature store), filled block by block, committed atomically.

    Used for result files such as ``classify --out PRED.h5`` and partial results. Rows
    are written into a temporary file beside ``path``, which replaces ``path`` only at
    :meth:`commit`.

    Parameters
    ----------
    path : path-like
        The destination file (its folder must exist).
    kind : str
        What the file holds (``"predictions"``); used in messages.

    Examples
    --------
    >>> with ArrayFileWriter("pred.h5", kind="predictions") as out:  # doctest: +SKIP
    ...     out.create("labels", (n,), np.int64)
    ...     out.write("labels", 0, labels[:100])
    ...     out.set_attrs({"k": 10})
    """

    def __init__(self, path: str | os.PathLike, *, kind: str):
        self.given = Path(path)
        self.path = real_path(self.given)  # a symlink is written through
        self.kind = kind
        if not self.path.parent.is_dir():
            raise StoreError(
                f"folder not found for the {kind} file: {self.given.parent}", hint="create the folder first"
            )
        if self.path.is_dir():
            raise StoreError(f"{self.given} is a folder", hint=f"give the path of the {kind} .h5 file")
        check_can_create(self.path, kind)
        remove_dead_temps(self.path)
        self._declared_bytes = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._tmp = temp_path_for(self.path)
        try:
            self._h5 = open_h5(self._tmp, "w")
        except BaseException:  # a failure, or a signal, once HDF5 has created the file
            discard_temp(self._tmp)
            raise

    def create(self, name: str, shape: tuple[int, ...], dtype) -> None:
        """Create dataset ``name`` of ``shape`` (chunked by rows; groups made from ``a/b`` names)."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        chunks = None
        if shape and shape[0] > 0 and all(s > 0 for s in shape):
            row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            chunks = (chunk_rows(shape[0], row, dtype.itemsize),) + shape[1:]
        # kept open: closing a dataset flushes its chunks, and after a failed write that must
        # happen only in abort(), once the file has been emptied (see storage.hdf5.discard_h5)
        self._datasets[name] = self._guard(
            lambda: self._h5.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
        )
        self._declared_bytes += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def check_space(self) -> None:
        """Refuse to start when the datasets created so far cannot fit on the disk."""
        need = self._declared_bytes + 2**20
        try:
            check_free_space(self.path, need, self.kind)
            reserve(self._tmp, self._declared_bytes + 2**16)
        except BaseException as exc:
            self.abort()
            err = output_error(exc, self.given, self.kind) if isinstance(exc, Exception) else None
            if err is not None:
                raise err from exc
            raise

    def write(self, name: str, start: int, values) -> None:
        """Write ``values`` (m, ...) into rows ``start .. start+m`` of dataset ``name``."""
        values = np.asarray(values)

        def _write():
            self._datasets[name][start : start + values.shape[0]] = values

        self._guard(_write)

    def flush(self) -> None:
        """Push what was written to the disk (a full disk is reported here, cleanly)."""
        self._guard(self._h5.flush)

    def _guard(self, action):
        """Run ``action``; on a failure drop the temporary file, and name a full disk."""
        try:
            return action()
        except Exception as exc:
            self.abort()
            err = output_error(exc, self.given, self.kind)
            if err is not None:
                raise err from exc
            raise

    def set_attrs(self, attrs: dict) -> None:
        """Root attributes; non-scalar values are stored as JSON strings."""
        for key, value in attrs.items():
            if value is not None:
                self._h5.attrs[key] = to_attr(value)

    def commit(self) -> None:
        """Close the file and move it over ``path`` atomically."""
        self.flush()
        self._datasets = {}
        self._guard(self._h5.close)
        self._guard(self._replace)

    def _replace(self) -> None:
        fsync_file(self._tmp)
        os.replace(self._tmp, self.path)
        forget_temp(self._tmp)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written; ``path`` is left as it was."""
        datasets, self._datasets = self._datasets, {}
        if self._tmp.exists():
            with contextlib.suppress(OSError):
                os.truncate(self._tmp, 0)
        for dset in datasets.values():
            with contextlib.suppress(Exception):
                dset.id.close()
        del datasets
        if self._tmp.exists():
            discard_h5(self._h5, self._tmp)
        else:
            with contextlib.suppress(Exception):
                self._h5.close()
        discard_temp(self._tmp)

    @contextlib.contextmanager
    def aborted_on_failure(self) -> Iterator[ArrayFileWriter]:
        """A block (declaring datasets, say) after which any exception, a signal included, aborts the file.

        For the code between construction and the ``try`` that would call :meth:`abort`.
        """
        try:
            yield self
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ArrayFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class ArrayFileReader:
    """A read-only HDF5 file of named row-aligned arrays.

    Parameters
    ----------
    path : path-like
    kind : str
        What the file should hold, e.g. ``"predictions"``; used in messages.
    nnk_format : str or None, default: ``kind``
        The root attribute ``nnk_format`` the file must have; None checks nothing (the
        caller does, with its own message).
    """

    def __init__(self, path: str | os.PathLike, *, kind: str, nnk_format: str | None = ""):
        self.path = Path(path)
        self.kind = kind
        self._h5 = _open(self.path, kind)
        fmt = self._h5.attrs.get("nnk_format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        want = kind if nnk_format == "" else nnk_format
        if want is not None and fmt != want:
            self._h5.close()
            raise StoreError(
                f"{self.path} is not an nnkcli {kind} file (nnk_format={fmt!r})",
                hint=f"write one with 'nnk classify STORE --out {self.path.name}'",
            )

    @property
    def attrs(self) -> dict:
        """Root attributes; strings holding JSON objects or lists are decoded."""
        return {key: from_attr(value) for key, value in list(self._h5.attrs.items())}

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
            raise StoreError(
                f"cannot read {name} from {self.path}: {exc}", hint="the file is damaged; write it again"
            ) from None

    def _need(self, name: str) -> None:
        if name not in self._h5:
            raise StoreError(
                f"{self.path} has no dataset '{name}'", hint=f"it is not a complete {self.kind} file; write it again"
            )

    def require(self, name: str, shape: tuple[int | None, ...], *, kinds: str = "iu") -> np.dtype:
        """Check dataset ``name`` before reading it: its rank, the sizes of ``shape`` that are not None,
        a dtype of one of the numpy ``kinds``, and that the file holds the data of every declared row
        (a crafted file may declare 2**40 rows and hold none: refused here, not read). Returns its dtype.
        """
        self._need(name)
        dset = self._h5[name]
        if not isinstance(dset, h5py.Dataset):
            raise self.damaged(f"'{name}' is a group, not a dataset")
        got = tuple(dset.shape or ())
        if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape, strict=True)):
            sizes = ["*" if w is None else str(w) for w in shape]
            want = f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"
            raise self.damaged(f"dataset '{name}' has shape {got}, expected {want}")
        if dset.dtype.kind not in kinds:
            what = {"iu": "integers", "S": "byte strings"}.get(kinds, f"dtype kind {kinds}")
            raise self.damaged(f"dataset '{name}' holds {dset.dtype} values, expected {what}")
        present = _rows_present(dset)
        if present < got[0]:
            raise self.damaged(f"dataset '{name}' declares {got[0]} rows but holds the data of at most {present}")
        return dset.dtype

    def damaged(self, what: str) -> StoreError:
        """The error for a file whose content is not what nnkcli writes (``what``: which part, how)."""
        return StoreError(
            f"{self.path} is not a valid {self.kind} file: {what}",
            hint="the file is damaged or was not written by nnkcli; write it again",
        )

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> ArrayFileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: Path, kind: str):
    if not path.exists():
        raise StoreError(f"{kind} file not found: {path}")
    if path.is_dir():
        raise StoreError(f"{path} is a folder", hint=f"give the path of a {kind} .h5 file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        truncated = _TRUNCATED.search(str(exc))
        if truncated:  # a copy or a download cut short
            raise StoreError(
                f"cannot read {path}: the file is truncated ({truncated.group(1)} bytes, "
                f"HDF5 expects at least {truncated.group(2)})",
                hint="copy or write it again",
            ) from None
        raise StoreError(f"cannot read {path}: not a readable HDF5 file ({exc})") from None


_TRUNCATED = re.compile(r"truncated file: eof = (\d+), .*stored_eof = (\d+)")


def _rows_present(dset) -> int:
    """How many leading rows of ``dset`` the file can hold data for (without reading them).

    A chunked dataset stores only the chunks written to; a contiguous one is allocated
    whole at its first write; a compact one lives in its header.
    """
    n = int(dset.shape[0]) if dset.shape else 1
    if n == 0 or dset.size == 0:
        return n
    layout = dset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.COMPACT:
        return n
    if layout == h5py.h5d.CONTIGUOUS:
        return n if dset.id.get_storage_size() >= dset.nbytes else 0
    chunks = dset.chunks
    per_row_block = 1
    for size, chunk in zip(dset.shape[1:], chunks[1:], strict=True):
        per_row_block *= -(-size // chunk)
    allocated = dset.id.get_num_chunks()
    return min(n, (allocated // per_row_block) * chunks[0])


def nnk_format_of(path: str | os.PathLike, *, kind: str = "input") -> str | None:
    """The root attribute ``nnk_format`` of the HDF5 file ``path`` (None when it has none).

    Raises
    ------
    StoreError
        The file is missing, a folder, or not a readable HDF5 file (a truncated one says so).
    """
    with _open(Path(path), kind) as f:
        fmt = f.attrs.get("nnk_format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    return fmt if isinstance(fmt, str) else None


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
            attrs = {key: from_attr(value) for key, value in list(f.attrs.items())}
            arrays: dict[str, np.ndarray] = {}
            f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    except OSError:
        raise StoreError(
            f"{path} is not a readable {kind} file (HDF5)", hint=f"give a {kind} file written by nnk"
        ) from None
    return attrs, arrays
