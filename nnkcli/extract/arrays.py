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

from nnkcli.errors import InputError
from nnkcli.extract.common import FileRows, ImportedFeatures
from nnkcli.storage.checks import check_feature_array

logger = logging.getLogger("nnkcli")

_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # 30 bytes; name and extra lengths last


def _read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    # 3.0 (utf-8 field names) has no public reader; the private one is missing from numpy's stubs
    return np.lib.format._read_array_header(fh, version)  # type: ignore[attr-defined]


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
        raise InputError(
            f"{path} is not a valid .npz file", hint=f"it could not be opened as a zip archive: {exc}"
        ) from exc
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
            raise InputError(
                f"{path} is not a valid .npz file", hint=f"array '{key}' could not be read: {exc}"
            ) from exc


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
            labels = open_npz_member(
                path, labels_key or "labels", "labels", "--labels-key", required=labels_key is not None
            )
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
