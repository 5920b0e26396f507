"""Crash-safe file writes, pre-flight checks of outputs, and advisory locks.

Every file nnkcli produces (stores, indexes, prediction files, plots, histories)
is written to a temporary file in the destination's directory and moved over the
destination with ``os.replace`` only once it is complete and flushed to disk. A
crash, SIGKILL or Ctrl-C at any moment therefore leaves either the old file or the
complete new one. A killed process can leave its temporary file behind (named
``.<name>.tmp-<pid>-<token>``); it is never mistaken for the destination, and the
next atomic write of the same destination deletes it once its writer is gone.

A signal can also arrive in the instants between a temporary file's creation and the
``try`` that would remove it (inside ``os.open``'s return, inside ``h5py.File``). Every
temporary path is therefore recorded, with its writer's pid, when it is named; the
command line calls :func:`remove_own_temps` as it exits, which deletes what this
process named and did not move into place or remove itself.

Destinations are resolved through symbolic links first, so a symlinked store is
written through (its target gets the new content) and every path to one file
shares one lock.

Environment failures (a full disk, a read-only folder, a missing permission) are
raised as :class:`nnkcli.errors.OutputError` naming the destination, and
:func:`check_can_create` finds the last two before any work starts.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from nnkcli.errors import LockTimeout, OutputError

logger = logging.getLogger("nnkcli")

TMP_MARKER = ".tmp-"
#: errno values that mean "this output cannot be written here"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
#: how long a lock is waited for before saying so on stderr
LOCK_NOTICE_S = 1.0
_LOCK_POLL_S = 0.05


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with every symbolic link resolved (a missing final name is kept as given).

    Writes go to the real file so that a link keeps pointing at the new content, and
    locks are taken on the real file so that two paths to one file share one lock.
    """
    return Path(os.path.realpath(os.fspath(path)))


#: temporary path -> pid of the process that named it (a forked child inherits the dict; it
#: removes only its own)
_OWN_TEMPS: dict[Path, int] = {}


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path`` (same directory, so same filesystem).

    The path is recorded for :func:`remove_own_temps` before anything can create it;
    its owner calls :func:`forget_temp` once it is moved into place or removed.
    """
    path = Path(path)
    pid = os.getpid()
    tmp = path.with_name(f".{path.name}{TMP_MARKER}{pid}-{secrets.token_hex(4)}")
    _OWN_TEMPS[tmp] = pid
    return tmp


def forget_temp(tmp: Path) -> None:
    """``tmp`` is gone (moved over its destination, or removed): stop tracking it."""
    _OWN_TEMPS.pop(tmp, None)


def discard_temp(tmp: Path) -> None:
    """Remove the temporary file or folder ``tmp`` if it is there (errors ignored), and forget it."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)  # as much of it as can go
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()
    forget_temp(tmp)


def _remove_path(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp)
    else:
        tmp.unlink()


def remove_own_temps() -> list[Path]:
    """Delete every temporary file/folder this process named that still exists; returns them.

    For the command line's exit: after a signal or an error nothing this process was
    writing is wanted, and a signal may have struck where no ``try`` covered the file.
    """
    pid = os.getpid()
    removed: list[Path] = []
    for tmp, owner in list(_OWN_TEMPS.items()):
        if owner != pid:
            continue
        _OWN_TEMPS.pop(tmp, None)
        try:
            _remove_path(tmp)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.debug("could not remove the temporary file %s: %s", tmp, exc)
            continue
        removed.append(tmp)
        logger.debug("removed the temporary file of an unfinished write: %s", tmp)
    return removed


# a library user's interpreter (a notebook interrupted mid-write) cleans up as it exits too
atexit.register(remove_own_temps)


def remove_dead_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files/folders that killed writers of ``path`` left behind.

    Their names carry the writer's pid (see :func:`temp_path_for`); only those whose
    process is gone are removed. Returns what was removed.
    """
    path = Path(path)
    prefix = f".{path.name}{TMP_MARKER}"
    removed: list[Path] = []
    try:
        candidates = list(path.parent.glob(f"{glob_escape(prefix)}*"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            pid = int(tmp.name[len(prefix) :].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _process_alive(pid):
            continue  # a live writer (or this process): leave it
        with contextlib.suppress(OSError):
            _remove_path(tmp)
            removed.append(tmp)
            logger.debug("removed the temporary file of an interrupted write: %s", tmp)
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped (a file name may contain ``[``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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


# -- environment errors ----------------------------------------------------------------
def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk or quota (h5py wraps it in RuntimeError text)."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28," in text or "Disk quota exceeded" in text


def output_error(exc: BaseException, path: str | os.PathLike, what: str = "") -> OutputError | None:
    """The clean error for an environment failure while writing ``path`` (None if it is not one)."""
    name = f"{what} {path}" if what else str(path)
    if is_no_space(exc):
        return OutputError(
            f"no space left on device while writing {name}",
            hint="free some space (or write to another disk) and rerun; the old file, if any, is intact",
        )
    if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return OutputError(
            f"cannot write {name}: {reason}", hint="choose a writable location, or fix the folder's permissions"
        )
    return None


def check_can_create(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, not after the work, if ``path`` could not be written atomically.

    Checks that the folder exists, that ``path`` is not a folder, and that a file can
    be created beside it (a probe file is created and removed at once: this is the
    only check that a read-only mount or a root-owned folder cannot fool). Returns
    the real path of the destination.
    """
    given = Path(path)
    real = real_path(given)
    if not real.parent.is_dir():
        raise OutputError(f"folder not found for the {what} file: {given.parent}", hint="create the folder first")
    if real.is_dir():
        raise OutputError(f"{given} is a folder, not a file", hint=f"give the path of the {what} file")
    probe = temp_path_for(real)
    try:
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            err = output_error(exc, given, what)
            if err is None:
                raise
            raise err from None
        os.close(fd)
    finally:  # also when a signal strikes between the open and the close
        discard_temp(probe)
    return real


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str = "output") -> None:
    """Refuse to start a write of about ``need_bytes`` that cannot fit on ``path``'s disk.

    Writing into a nearly full disk is not only slow to fail: HDF5 2.0 can crash the
    process when a write fails for lack of space, so known sizes are checked first.
    """
    folder = real_path(path).parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need_bytes > free:
        raise OutputError(
            f"no space left on device while writing {what} {path}: it needs about "
            f"{_mib(need_bytes)}, {_mib(free)} are free",
            hint="free some space (or write to another disk) and rerun; the old file, if any, is intact",
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- atomic writes -----------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, copy_existing: bool = False, what: str = "") -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The destination (symbolic links are followed: the link's target is replaced).
        Its directory must exist.
    copy_existing : bool, default=False
        Start the temporary file as a copy of ``path`` (when it exists), for
        read-modify-write updates such as adding a split to a store.
    what : str, optional
        What the file is ("index", "plot"), for error messages.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left exactly as it was. Temporary files of earlier writers of
    ``path`` that were killed are removed first. A full disk or an unwritable folder
    becomes :class:`OutputError`.
    """
    given = Path(path)
    path = real_path(given)
    remove_dead_temps(path)
    tmp = temp_path_for(path)
    try:
        if copy_existing and path.exists():
            shutil.copyfile(path, tmp)
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        fsync_file(tmp)
        os.replace(tmp, path)
        forget_temp(tmp)
        fsync_dir(path.parent)
    except BaseException as exc:
        discard_temp(tmp)
        err = output_error(exc, given, what) if isinstance(exc, Exception) else None
        if err is not None:
            raise err from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# -- locks -------------------------------------------------------------------------------
def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<real path>.lock``."""
    return Path(f"{real_path(path)}.lock")


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike,
    *,
    shared: bool = False,
    timeout: float | None = None,
    remove_if_absent: bool = False,
) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``<path>.lock`` for the duration of the block.

    Parameters
    ----------
    path : path-like
        What the lock protects (symbolic links resolved, so every path to one file
        shares one lock).
    shared : bool, default=False
        A shared (reader) lock instead of an exclusive one.
    timeout : float, optional
        Seconds to wait for another holder before raising :class:`LockTimeout`
        (None: wait as long as it takes, the right thing under cron). After
        ``LOCK_NOTICE_S`` of waiting, one line on the ``nnkcli`` logger says what is
        waited for and, when known, the holder's pid.
    remove_if_absent : bool, default=False
        Delete the lock file on release when ``path`` does not exist then (a refused
        first write leaves nothing behind).

    The kernel releases the lock when the process dies, so a crash never leaves it
    held. A lock file may be deleted by its holder (``remove_if_absent``): a process
    that acquires a lock checks that its file is still the one at the lock path and
    otherwise starts over, so a deleted lock file can never be held twice.
    """
    lock_path = lock_path_for(path)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    started = time.monotonic()
    noticed = False
    fd = None
    held = False
    # one try around the whole life of the descriptor: a signal between any two steps
    # (after the flock, before the yield) still closes it, which releases the lock
    try:
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                err = output_error(exc, lock_path, "lock file")
                if err is None:
                    raise
                raise err from None
            if _acquire(fd, shared, lock_path, deadline, started, noticed):
                held = True
                break
            # the file was replaced or deleted while we waited: retry (fd is cleared first, so
            # a signal here cannot make the finally close a number another open has reused)
            stale, fd = fd, None
            _close(stale)
            noticed = True
        if not shared:
            _record_holder(fd)
        yield
    finally:  # nested, so that a signal in one step still runs the next: the lock is always released
        try:
            if held and remove_if_absent and not shared:
                with contextlib.suppress(OSError):
                    if not real_path(path).exists():
                        os.unlink(lock_path)
        finally:
            if fd is not None:
                try:
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    _close(fd)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _acquire(fd: int, shared: bool, lock_path: Path, deadline, started: float, noticed: bool) -> bool | None:
    """flock ``fd``, polling so that the wait can be reported and bounded; None = retry."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            pass
        else:
            if _same_file(fd, lock_path):
                return True
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise LockTimeout(
                f"timed out after {now - started:.0f} s waiting for the lock {lock_path}{_holder_text(fd)}",
                hint="another nnk run is writing the same file; wait for it, or raise --lock-timeout",
            )
        if not noticed and now - started >= LOCK_NOTICE_S:
            logger.warning(
                "waiting for the lock %s%s (another nnk run is writing the same file)", lock_path, _holder_text(fd)
            )
            noticed = True
        time.sleep(_LOCK_POLL_S)


def _same_file(fd: int, lock_path: Path) -> bool:
    try:
        st = os.stat(lock_path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _record_holder(fd: int) -> None:
    """Write our pid into the lock file, so a waiting process can name the holder."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder_text(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f", held by pid {text}" if text.isdigit() else ""
