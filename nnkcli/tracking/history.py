"""The evaluation history: one JSON line per evaluated source, append-only (the file format).

A history file (``HISTORY.jsonl``) records every checkpoint or feature store that
``nnk evaluate`` has evaluated, keyed by the sha256 of the source's content. It is
written by cron jobs and CI runs that may overlap, so:

* lines are appended whole, with one ``write`` under ``file_lock(history)``, and
  fsync'd before the lock is released; a line is never rewritten;
* readers never fail on a bad line: a torn line (a crash of an older writer, a
  full disk) or a hand-edited one is reported with its line number and skipped;
* an appender first makes sure the file ends with a newline, so a torn last line
  stays alone on its line instead of corrupting the next complete record;
* only a history is ever appended to: a file that is not empty must start with a
  history record (every line nnkcli writes starts with ``{"schema_version":``, the
  format marker) -- a feature store or any other file passed as the history by a typo
  is refused before anything is written or created beside it;
* reading never creates a file (the shared lock is taken only where the lock file
  already exists: a reader that races the very first append sees a torn last line at
  worst, which is reported and skipped like any other).

What is derived from the entries lives beside it: ``views`` (training order, the rows
of ``nnk history``) and ``gates``; how sources are identified is in ``sources``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnkcli.errors import InputError, NnkError
from nnkcli.storage.atomic import file_lock, fsync_dir, lock_path_for

#: version of one history line's layout; a reader skips lines of a newer version
HISTORY_SCHEMA_VERSION = 1
#: the first bytes of every history line, and so of every history file: its format marker
HISTORY_MARKER = b'{"schema_version":'
#: the first bytes of an HDF5 file's signature (a feature store given as the history by mistake)
_HDF5_SIGNATURE = b"\x89HDF\r\n"


class HistoryError(NnkError):
    """The history file cannot be read or written."""


# -- reading ---------------------------------------------------------------------
@dataclass(frozen=True)
class MalformedLine:
    """A history line that was skipped: 1-based line number and why."""

    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


@dataclass
class History:
    """The entries of a history file, in file order, and the lines that were skipped."""

    path: Path
    entries: list[dict] = field(default_factory=list)
    malformed: list[MalformedLine] = field(default_factory=list)

    def malformed_summary(self) -> str | None:
        """One line saying how many lines were skipped and why the first was, or None when none were."""
        if not self.malformed:
            return None
        n = len(self.malformed)
        lines = "line" if n == 1 else "lines"
        return (
            f"{self.path.name}: {n} malformed {lines} skipped (first: {self.malformed[0]}); "
            f"'nnk history {self.path} --format json' lists them"
        )

    @property
    def sha256s(self) -> set[str]:
        return {e["sha256"] for e in self.entries}

    def find(self, sha256: str, params_key: str | None = None) -> dict | None:
        """The newest entry of ``sha256`` (of parameter set ``params_key`` when given)."""
        from nnkcli.tracking.paramsets import entry_key

        for entry in reversed(self.entries):
            if entry["sha256"] == sha256 and (params_key is None or entry_key(entry) == params_key):
                return entry
        return None


def parse_history(lines: Iterable[bytes | str], path: str | os.PathLike = "<history>") -> History:
    """Parse history lines; bad lines become ``MalformedLine`` records, never exceptions.

    A line is kept when it is a JSON object with ``schema_version`` 1 and a
    64-hex-digit ``sha256``. An entry is identified by its sha256 and its parameter
    set (``nnkcli.tracking.paramsets``): a repeat of both is reported and skipped
    (it can only come from hand edits), unless it was recorded by ``--force``
    (``"forced": true``), which re-evaluates on purpose: the newer line wins in views.
    """
    from nnkcli.tracking.paramsets import entry_key

    history = History(Path(path))
    line_of: dict[tuple, int] = {}
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                history.malformed.append(MalformedLine(number, "not UTF-8 text"))
                continue
        text = raw.strip()
        if not text:
            continue
        problem = None
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as exc:
            entry = None
            problem = f"not valid JSON: {exc.msg} (column {exc.colno})"
        if problem is None:
            problem = _entry_problem(entry)
        if problem is not None:
            history.malformed.append(MalformedLine(number, problem))
            continue
        ident = (entry["sha256"], entry_key(entry))
        if ident in line_of and entry.get("forced") is not True:
            problem = (
                f"duplicate entry for sha256 {entry['sha256'][:12]} with the same parameters "
                f"(first on line {line_of[ident]})"
            )
            history.malformed.append(MalformedLine(number, problem))
            continue
        entry["_line"] = number
        line_of[ident] = number
        history.entries.append(entry)
    return history


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    version = entry.get("schema_version")
    if version != HISTORY_SCHEMA_VERSION:
        if isinstance(version, int) and version > HISTORY_SCHEMA_VERSION:
            return f"schema_version {version} is newer than this nnkcli reads ({HISTORY_SCHEMA_VERSION})"
        return f"missing or bad schema_version {version!r}"
    sha = entry.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return "missing or bad sha256"
    if not isinstance(entry.get("best", {}), dict) or not isinstance(entry.get("results", []), list):
        return "bad 'best' or 'results' field"
    return None


def check_is_history(path: str | os.PathLike) -> None:
    """Refuse a file that is not a history: it must be absent, empty, or start with ``HISTORY_MARKER``.

    Every line nnkcli writes starts with the marker, so a history's first line does too,
    even one torn by a crash (its record is then reported and skipped when read, as any
    torn line is). Reads the first few bytes; writes and creates nothing.

    Raises
    ------
    HistoryError
        The file exists, is not empty, and does not start with a history record (a
        feature store, a log, a CSV ...), or it cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HISTORY_MARKER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise HistoryError(
            f"history path is a directory: {path}", hint="give a file name such as history.jsonl"
        ) from None
    except OSError as exc:
        raise HistoryError(f"cannot read history file {path}: {exc.strerror or exc}") from exc
    if not head or head == HISTORY_MARKER:
        return
    what = " (it is an HDF5 file: a feature store?)" if head.startswith(_HDF5_SIGNATURE) else ""
    raise HistoryError(
        f"{path} is not an nnkcli history{what}: its first line is not a history record; it was left as it is",
        hint="--history takes the .jsonl file that nnk evaluate writes, or a new file name",
    )


def read_history(path: str | os.PathLike, *, missing_ok: bool = True, lock: bool = True) -> History:
    """Read a history file.

    Parameters
    ----------
    path : path-like
        The ``.jsonl`` file.
    missing_ok : bool, default=True
        A missing file is an empty history (the first cron run); otherwise an error.
    lock : bool, default=True
        Hold a shared lock while reading so that a concurrent append is never seen
        half-written. Skipped where the lock file cannot be created (a read-only
        directory); pass False when the caller already holds the exclusive lock.

    Raises
    ------
    HistoryError
        The file is missing (with ``missing_ok=False``), a directory, unreadable, or
        not a history (``check_is_history``).
    """
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"history path is a directory: {path}", hint="give a file name such as history.jsonl")
    if not path.exists():
        if missing_ok:
            return History(path)
        raise HistoryError(f"history file not found: {path}", hint="nnk evaluate ... --history FILE creates it")
    check_is_history(path)
    guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if lock:
        guard = _shared_lock_if_possible(path)
    try:
        with guard, open(path, "rb") as fh:
            return parse_history(fh, path)
    except OSError as exc:
        raise HistoryError(f"cannot read history file {path}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _shared_lock_if_possible(path: Path):
    """A shared lock where a writer has made the lock file; a reader creates no file."""
    with contextlib.ExitStack() as stack:
        if lock_path_for(path).exists():
            try:
                stack.enter_context(file_lock(path, shared=True))
            except OSError:  # unreadable lock file: read without it (a torn last line is skipped)
                pass
        yield


# -- writing ---------------------------------------------------------------------
def encode_entry(entry: dict) -> bytes:
    """One history line: compact JSON, ``schema_version`` first, a trailing newline."""
    doc = {"schema_version": HISTORY_SCHEMA_VERSION}
    doc.update((k, v) for k, v in entry.items() if k != "schema_version" and not k.startswith("_"))
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"history entry is not plain JSON: {exc}") from exc
    if "\n" in text:  # pragma: no cover - json.dumps escapes newlines
        raise InputError("history entry would span several lines")
    return (text + "\n").encode("utf-8")


def append_entry(path: str | os.PathLike, entry: dict) -> None:
    """Append one complete line to the history and fsync it.

    The caller holds ``file_lock(path)``: appends from overlapping processes are
    then serialised, and the check-then-append in ``nnkcli.tracking.runner`` is atomic.
    The line is written with a single ``write`` on an ``O_APPEND`` descriptor; if
    the file does not end with a newline (a torn line left by a crash), a newline
    goes first so that the torn line stays a separate, skipped line. A failed or
    short write (a full disk) is undone: the file is cut back to its old size (the
    caller's lock keeps other writers out meanwhile) and the error is raised, so no
    torn line is ever left by a write that reported its failure.
    """
    path = Path(path)
    data = encode_entry(entry)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HistoryError(f"cannot write history file {path}: {exc.strerror or exc}") from exc
    size = None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file takes it in one write; a full disk may not
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException as exc:
        if size is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line: the history is as it was
                os.fsync(fd)
        if not isinstance(exc, OSError):
            raise
        from nnkcli.storage.atomic import output_error

        clean = output_error(exc, path, "history")
        message = clean.message if clean is not None else f"cannot write history file {path}: {exc.strerror or exc}"
        raise HistoryError(message, hint=clean.hint if clean is not None else None) from exc
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
