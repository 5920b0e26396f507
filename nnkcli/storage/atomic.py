"""Crash-safe file writes and advisory locks.

Every file nnkcli produces (stores, indexes, prediction files, plots, histories)
is written to a temporary file in the destination's directory and moved over the
destination with ``os.replace`` only once it is complete and flushed to disk. A
crash, SIGKILL or Ctrl-C at any moment therefore leaves either the old file or the
complete new one. A killed process can leave its temporary file behind (named
``.<name>.tmp-<pid>-<token>``); it is never mistaken for the destination.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_MARKER = ".tmp-"


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path`` (same directory, so same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The destination. Its directory must exist.
    copy_existing : bool, default=False
        Start the temporary file as a copy of ``path`` (when it exists), for
        read-modify-write updates such as adding a split to a store.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left exactly as it was.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        if copy_existing and path.exists():
            shutil.copyfile(path, tmp)
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``<path>.lock`` for the duration of the block.

    The lock file is never deleted (deleting it would race with other holders);
    the kernel releases the lock when the process dies, so a crash never leaves
    it held.
    """
    lock_path = Path(f"{os.fspath(path)}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
