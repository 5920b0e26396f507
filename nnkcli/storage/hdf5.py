"""The HDF5 habits every nnkcli file shares: how a file is opened, written, dropped and chunked.

Used by the feature store (:mod:`nnkcli.storage.store_reader`, :mod:`nnkcli.storage.store`)
and by the files of named arrays (:mod:`nnkcli.storage.array_files`), so that both survive a
full disk the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import h5py

#: bytes of one HDF5 chunk of a dataset written by nnkcli
HDF5_CHUNK_BYTES = 1 << 20
#: the dtype of stored strings (class names, sample ids)
STR_DTYPE = h5py.string_dtype("utf-8")


def open_h5(path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)`` without HDF5's own file locking."""
    # HDF5's own file locking is redundant with our replace-and-lock protocol and
    # fails on some network filesystems, so it is switched off where supported.
    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # pragma: no cover - very old h5py
        return h5py.File(path, mode)


@contextlib.contextmanager
def h5_for_writing(tmp: Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``tmp`` that is flushed before it is closed, and safely dropped on failure."""
    h5 = open_h5(tmp, "w")
    try:
        yield h5
        h5.flush()  # a full disk fails here, as an exception, rather than in close()
    except BaseException:
        discard_h5(h5, tmp)
        raise
    try:
        h5.close()
    except BaseException:
        discard_h5(h5, tmp)
        raise


def discard_h5(h5: h5py.File, tmp: Path) -> None:
    """Close a half-written HDF5 file that is going to be deleted.

    After a write failed for lack of space, HDF5 2.0 retries the failed writes when
    the file is closed and can crash the process doing so. Emptying the file first
    frees the space those writes need (its content is being thrown away anyway).
    """
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        h5.close()


def reserve(path: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` of disk for a file being written, so that its writes cannot hit a full disk.

    HDF5 writes inside the reserved range and cuts the file back to what it used when
    it closes; a full disk is thus found here, before anything is written, rather than
    in the middle of HDF5's writes (where HDF5 2.0 can crash).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            return  # a filesystem without preallocation: the free-space check has to do
        raise
    finally:
        os.close(fd)


def chunk_rows(n: int, row_items: int, itemsize: int) -> int:
    """Rows per HDF5 chunk of an (n, ...) dataset whose rows hold ``row_items`` items of ``itemsize`` bytes."""
    return int(max(1, min(n, HDF5_CHUNK_BYTES // max(1, row_items * itemsize))))
