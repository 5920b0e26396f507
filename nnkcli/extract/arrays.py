"""Importing numpy arrays: ``.npy`` features (+ labels) and ``.npz`` archives.

Feature arrays are never loaded whole: :class:`FileRows` reads the rows asked for
with plain file reads, from a ``.npy`` or from an uncompressed ``.npz`` member inside
its zip file (``np.savez`` stores members uncompressed). Plain reads rather than a
memory map keep the process's resident memory at one block: a memory map would count
every page read so far, up to the whole file. Only a compressed ``.npz`` member has
to be read into memory. Pickled (object) arrays are refused rather than unpickled:
loading a pickle runs code from the file.
"""

from __future__ import annotations

import logging
import os
import struct
import types
import zipfile
from pathlib import Path

import numpy as np

from nnkcli.storage.checks import check_feature_array
from nnkcli.errors import InputError
from nnkcli.extract import ImportedFeatures, as_numpy, check_input_path

logger = logging.getLogger("nnkcli")

_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # 30 bytes; name and extra lengths last


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


def _read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)  # 3.0: utf-8 field names


def _refuse_objects(shape, dtype, what: str, path: Path) -> None:
    if not dtype.hasobject:
        return
    if what == "features":
        # the same message as for any other bad dtype
        check_feature_array(types.SimpleNamespace(shape=shape, dtype=dtype))
    raise InputError(
        f"{what} in {path} are Python objects (a pickled array), which nnkcli does not unpickle",
        hint="save integers or fixed-width strings instead, e.g. np.save(path, np.array(names, dtype=str))",
    )


def _rows_at(path: Path, offset: int, shape, fortran: bool, dtype: np.dtype, what: str):
    """FileRows for C-ordered data; Fortran-ordered data (rare) is memory-mapped instead."""
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise InputError(f"{path} is truncated", hint=f"its header announces {what} of shape {tuple(shape)}")
    if fortran and len(shape) > 1 and 0 not in shape:
        logger.info("%s is stored in Fortran order; reading it through a memory map", path.name)
        return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), order="F", offset=offset)
    return FileRows(path, offset, tuple(shape), dtype)


def open_npy(path: str | os.PathLike, what: str = "features"):
    """A ``.npy`` file as :class:`FileRows` (nothing read yet); InputError if it is not a valid one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            shape, fortran, dtype = _read_npy_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a valid .npy file", hint=f"numpy could not read it: {exc}") from exc
    _refuse_objects(shape, dtype, what, path)
    return _rows_at(path, offset, shape, fortran, dtype, what)


def load_npy(path: str | os.PathLike, what: str = "labels") -> np.ndarray:
    """A small ``.npy`` (labels, indices) read into memory."""
    return np.asarray(open_npy(path, what))


def _npz_keys(zf: zipfile.ZipFile) -> list[str]:
    return [name[:-4] for name in zf.namelist() if name.endswith(".npy")]


def open_npz_member(path: Path, key: str, what: str, option: str, *, required: bool = True):
    """One array of a ``.npz``: :class:`FileRows` when stored uncompressed, else loaded.

    Returns None when ``key`` is absent and not ``required``.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a valid .npz file",
                         hint=f"it could not be opened as a zip archive: {exc}") from exc
    with zf:
        keys = _npz_keys(zf)
        if key not in keys:
            if not required:
                return None
            raise InputError(
                f"{path} has no array '{key}' (it holds: {', '.join(keys) or 'nothing'})",
                hint=f"name the array with {option}",
            )
        info = zf.getinfo(key + ".npy")
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                return _map_stored_member(path, info, what)
            with zf.open(info) as fh:
                shape, _, dtype = _read_npy_header(fh)
            _refuse_objects(shape, dtype, what, path)
            logger.info("%s of %s are compressed; reading them into memory", what, path.name)
            with zf.open(info) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path} is not a valid .npz file",
                             hint=f"array '{key}' could not be read: {exc}") from exc


def _map_stored_member(path: Path, info: zipfile.ZipInfo, what: str):
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = _ZIP_LOCAL_HEADER.unpack(fh.read(_ZIP_LOCAL_HEADER.size))
        name_len, extra_len = header[-2], header[-1]
        fh.seek(info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len)
        shape, fortran, dtype = _read_npy_header(fh)
        offset = fh.tell()
    _refuse_objects(shape, dtype, what, path)
    return _rows_at(path, offset, shape, fortran, dtype, what)


def load_arrays(
    path: str | os.PathLike,
    *,
    features_key: str | None = None,
    labels_key: str | None = None,
    labels_given: bool = False,
) -> ImportedFeatures:
    """Features (and labels) from a ``.npy`` or ``.npz`` file."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        features = open_npz_member(path, features_key or "features", "features", "--features-key")
        labels = None
        if not labels_given:
            labels = open_npz_member(path, labels_key or "labels", "labels", "--labels-key",
                                     required=labels_key is not None)
            if labels is not None:
                labels = np.asarray(labels)
            else:
                logger.warning("%s has no 'labels' array; the split is stored unlabelled", path.name)
        fmt = "npz"
    else:
        features = open_npy(path)
        labels = None
        if not labels_given:
            logger.warning("no --labels given; the split is stored unlabelled")
        fmt = "npy"
    return ImportedFeatures(
        features=features,
        labels=labels,
        source=f"{fmt}:{path.resolve()}",
        attrs={"source_format": fmt},
    )


def read_labels(path: str | os.PathLike, *, key: str | None = None) -> np.ndarray:
    """Labels from ``.npy``, ``.npz`` (``key``, default ``labels``), ``.pth`` or a text file.

    Text files hold one label per line (integers or names; blank lines are refused,
    so line numbers stay row numbers). Returns a 1-D array of integers or strings.
    """
    path = check_input_path(path, "labels file", "--labels")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a labels file", hint="give a .npy, .npz, .txt or .pth labels file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path, what="labels")
    if suffix == ".npz":
        return np.asarray(open_npz_member(path, key or "labels", "labels", "--labels-key"))
    if suffix in (".pth", ".pt"):
        from nnkcli.extract.dino import load_tensor

        return as_numpy(load_tensor(path, "labels"))
    if suffix in (".txt", ".csv", ".tsv", ".labels", ""):
        return _read_text_labels(path)
    raise InputError(f"unsupported labels file {path}", hint="give labels as .npy, .npz, .txt (one per line) or .pth")


def _read_text_labels(path: Path) -> np.ndarray:
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels from {path}: {exc}",
                         hint="a text labels file is utf-8, one label per line") from exc
    values = [line.strip() for line in lines]
    while values and values[-1] == "":
        values.pop()
    if "" in values:
        raise InputError(
            f"{path} has an empty line (line {values.index('') + 1})",
            hint="one label per line; write -1 for an unlabelled row",
        )
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        # every line a number but not all integers ("1.5", "2.0"): numbers, checked as a .npy of
        # floats would be (integer values accepted, 1.5 refused), never silently class names
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)
