"""The evaluation history: one JSON line per evaluated source, append-only.

A history file (``HISTORY.jsonl``) records every checkpoint or feature store that
``nnk evaluate`` has evaluated, keyed by the sha256 of the source's content. It is
written by cron jobs and CI runs that may overlap, so:

* lines are appended whole, with one ``write`` under ``file_lock(history)``, and
  fsync'd before the lock is released; a line is never rewritten;
* readers never fail on a bad line: a torn line (a crash of an older writer, a
  full disk) or a hand-edited one is reported with its line number and skipped;
* an appender first makes sure the file ends with a newline, so a torn last line
  stays alone on its line instead of corrupting the next complete record.

This module also owns what is derived from the history: the step of a source
(from the checkpoint's own counters or from its file name), the ordering of
entries, the regression gate and the rows of ``nnk history``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnkcli.storage.atomic import file_lock, fsync_dir
from nnkcli.errors import InputError, NnkError

#: version of one history line's layout; a reader skips lines of a newer version
HISTORY_SCHEMA_VERSION = 1

#: checkpoint dict keys holding a training counter, most specific first
CHECKPOINT_STEP_KEYS = ("epoch", "global_step", "step", "iteration", "iter")

_HASH_CHUNK = 1 << 20

# `checkpoint0040.pth`, `epoch_12.pt`, `epoch=3-step=500.ckpt`, `step-5000`, `model_iter_800`
_NAME_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(epoch|global_step|step|iteration|iter|it|ep)[_\-=]?(\d+)(?!\d)", re.IGNORECASE),
    re.compile(r"(?:^|[^a-z])(checkpoint|ckpt|model|weights)[_\-=]?(\d+)(?!\d)", re.IGNORECASE),
)
_ALL_DIGITS = re.compile(r"^\d+$")


class HistoryError(NnkError):
    """The history file cannot be read or written."""


# -- identification of sources ---------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks (checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def step_from_name(name: str | os.PathLike) -> tuple[int, str] | None:
    """The training step or epoch written in a file name, if any.

    Parameters
    ----------
    name : str or path-like
        A file name or path; only the final component is read.

    Returns
    -------
    (int, str) or None
        The number and the word it followed (``"epoch"``, ``"step"``, ``"checkpoint"``
        ...; ``"name"`` for a name that is only digits), or None.

    Examples
    --------
    >>> step_from_name("checkpoint0040.pth")
    (40, 'checkpoint')
    >>> step_from_name("runs/epoch=3-step=500.ckpt")
    (3, 'epoch')
    """
    file_name = Path(name).name
    stem = file_name.split(".", 1)[0]
    if _ALL_DIGITS.match(stem):
        return int(stem), "name"
    for pattern in _NAME_STEP_PATTERNS:
        match = pattern.search(file_name)
        if match:
            return int(match.group(2)), match.group(1).lower()
    return None


def step_from_checkpoint(obj: Any) -> tuple[int, str] | None:
    """The training counter stored in a loaded checkpoint dict (``epoch``, ``global_step`` ...).

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned; anything but a mapping gives None.

    Returns
    -------
    (int, str) or None
        The counter and its key, the first of ``CHECKPOINT_STEP_KEYS`` holding a
        non-negative integer (a 0-d tensor counts).
    """
    if not isinstance(obj, dict):
        return None
    for key in CHECKPOINT_STEP_KEYS:
        value = obj.get(key)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value >= 0:
            return value, key
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value), key
    return None


def read_checkpoint_step(path: str | os.PathLike) -> tuple[int, str] | None:
    """The counter inside a torch checkpoint, or None when torch cannot read it.

    Uses ``weights_only=True`` (a checkpoint is never executed just to read its
    epoch) and memory-maps the file where the format allows, so a multi-GB
    checkpoint is not read into memory. ``argparse.Namespace`` (DINO's and MoCo's
    saved arguments) is allowed; checkpoints pickling other objects are refused by
    ``weights_only``, and their step then comes from the file name.
    """
    try:
        import argparse

        import torch
    except ImportError:
        return None
    for kwargs in ({"mmap": True}, {}):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, **kwargs)
        except Exception:  # any unreadable checkpoint: fall back to the name
            continue
        return step_from_checkpoint(obj)
    return None


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
        ident = (entry["sha256"], entry_key(entry)) if problem is None else None
        if problem is None and ident in line_of and entry.get("forced") is not True:
            problem = (f"duplicate entry for sha256 {entry['sha256'][:12]} with the same parameters "
                       f"(first on line {line_of[ident]})")
        if problem is not None:
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
        The file is missing (with ``missing_ok=False``), a directory or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"history path is a directory: {path}", hint="give a file name such as history.jsonl")
    if not path.exists():
        if missing_ok:
            return History(path)
        raise HistoryError(f"history file not found: {path}", hint="nnk evaluate ... --history FILE creates it")
    guard = contextlib.nullcontext()
    if lock:
        guard = _shared_lock_if_possible(path)
    try:
        with guard, open(path, "rb") as fh:
            return parse_history(fh, path)
    except OSError as exc:
        raise HistoryError(f"cannot read history file {path}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _shared_lock_if_possible(path: Path):
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, shared=True))
        except OSError:  # a read-only directory: the lock file cannot be made, read without it
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
    goes first so that the torn line stays a separate, skipped line.
    """
    path = Path(path)
    data = encode_entry(entry)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HistoryError(f"cannot write history file {path}: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file takes it in one write; a full disk may not
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        raise HistoryError(f"cannot write history file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


# -- ordering, rows and the gate ---------------------------------------------------
def best_top1(entry: dict, method: str, metric: str = "top1") -> float | None:
    """The best top-1 (percent) of ``method`` recorded in an entry, or None.

    ``metric="top5"`` gives the top-5 at that same best k.
    """
    best = (entry.get("best") or {}).get(method)
    if not isinstance(best, dict):
        return None
    value = best.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def best_k(entry: dict, method: str) -> int | None:
    best = (entry.get("best") or {}).get(method)
    return best.get("k") if isinstance(best, dict) else None


def order_entries(entries: Sequence[dict]) -> list[dict]:
    """Entries in training order: by step; those without a step after them, by time.

    "Time" is the source file's modification time (when the checkpoint was
    written), then the evaluation's start, then the line number: sources copied
    around keep their order as long as at least one of these is meaningful.
    """

    def key(entry: dict):
        step = entry.get("step")
        has_step = isinstance(step, int) and not isinstance(step, bool)
        return (
            0 if has_step else 1,
            step if has_step else 0,
            str(entry.get("mtime") or ""),
            str(entry.get("started_at") or ""),
            entry.get("_line", 0),
        )

    return sorted(entries, key=key)


def entry_methods(entries: Sequence[dict]) -> list[str]:
    """Methods with a recorded best in any entry, ``nnk`` and ``knn`` first."""
    seen: list[str] = []
    for entry in entries:
        for method in (entry.get("best") or {}):
            if method not in seen:
                seen.append(method)
    preferred = [m for m in ("nnk", "knn") if m in seen]
    return preferred + sorted(m for m in seen if m not in preferred)


def history_rows(entries: Sequence[dict], methods: Sequence[str] | None = None) -> list[dict]:
    """One row per entry, in training order, for ``nnk history``.

    Each row has ``step``, ``source`` (file name), ``sha256`` (12 digits),
    ``evaluated_at`` and, per method ``m``: ``m_top1``, ``m_k``, ``m_delta_prev``
    (change from the previous row that has ``m``) and ``m_delta_best`` (this row
    minus the best of the whole history, so 0 for the best and negative otherwise),
    and ``best``: the methods for which this row is the best (first one on ties),
    space-separated.
    """
    ordered = order_entries(entries)
    methods = list(methods) if methods is not None else entry_methods(ordered)
    best_index: dict[str, int] = {}
    best_value: dict[str, float] = {}
    for i, entry in enumerate(ordered):
        for m in methods:
            value = best_top1(entry, m)
            if value is not None and (m not in best_value or value > best_value[m]):
                best_value[m], best_index[m] = value, i
    rows = []
    previous: dict[str, float] = {}
    for i, entry in enumerate(ordered):
        row = {
            "step": entry.get("step"),
            "source": Path(str(entry.get("source", ""))).name,
            "sha256": entry["sha256"][:12],
            "evaluated_at": entry.get("finished_at"),
        }
        for m in methods:
            value = best_top1(entry, m)
            row[f"{m}_top1"] = value
            ci = ((entry.get("best") or {}).get(m) or {}).get("top1_ci")
            row[f"{m}_top1_ci"] = ci if isinstance(ci, list) and len(ci) == 2 else None
            row[f"{m}_k"] = best_k(entry, m) if value is not None else None
            row[f"{m}_delta_prev"] = value - previous[m] if value is not None and m in previous else None
            row[f"{m}_delta_best"] = value - best_value[m] if value is not None else None
            if value is not None:
                previous[m] = value
        row["best"] = " ".join(m for m in methods if best_index.get(m) == i)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class GateCheck:
    """The outcome of the history gates for one method."""

    method: str
    newest: dict | None  # the entry checked
    newest_top1: float | None
    best: dict | None  # the entry with the highest best top-1
    best_top1: float | None
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def drop(self) -> float | None:
        """Points the newest entry is below the best (0 when it is the best)."""
        if self.newest_top1 is None or self.best_top1 is None:
            return None
        return self.best_top1 - self.newest_top1


def describe_entry(entry: dict) -> str:
    name = Path(str(entry.get("source", "?"))).name
    step = entry.get("step")
    return f"{name} (step {step})" if step is not None else name


def check_gates(
    entries: Sequence[dict],
    *,
    method: str = "nnk",
    max_drop: float | None = None,
    min_top1: float | None = None,
    min_top5: float | None = None,
) -> GateCheck:
    """Check the newest entry of a history against the regression and absolute gates.

    Parameters
    ----------
    entries : sequence of dict
        History entries; only those with a result for ``method`` take part.
    method : str, default="nnk"
        Whose best top-1 is compared.
    max_drop : float, optional
        Fail when the newest entry's best top-1 is more than this many points
        below the best of the history (``--fail-on-regression``).
    min_top1 : float, optional
        Fail when the newest entry's best top-1 is below this (``--min-top1``).
    min_top5 : float, optional
        Fail when the newest entry's top-5, at its best-top-1 k, is below this.

    Returns
    -------
    GateCheck
        ``newest`` is the last entry in training order (``order_entries``);
        ``failures`` holds one message per failed gate. With no entry for
        ``method`` there is nothing to check and the gates pass.
    """
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise InputError(f"--fail-on-regression must be a number of points >= 0, got {max_drop}")
    scored = [e for e in order_entries(entries) if best_top1(e, method) is not None]
    if not scored:
        return GateCheck(method, None, None, None, None)
    newest = scored[-1]
    best = max(scored, key=lambda e: best_top1(e, method))  # max keeps the first on ties
    newest_top1, top = best_top1(newest, method), best_top1(best, method)
    failures = []
    if max_drop is not None and top - newest_top1 > max_drop:
        failures.append(
            f"regression: {method} top-1 of the newest source {describe_entry(newest)} is {newest_top1:.2f}, "
            f"{top - newest_top1:.2f} points below the best {top:.2f} of {describe_entry(best)} "
            f"(allowed: {max_drop:g})"
        )
    if min_top1 is not None and newest_top1 < min_top1:
        failures.append(
            f"{method} top-1 of the newest source {describe_entry(newest)} is {newest_top1:.2f}, "
            f"below --min-top1 {min_top1:g}"
        )
    newest_top5 = best_top1(newest, method, "top5")
    if min_top5 is not None and (newest_top5 is None or newest_top5 < min_top5):
        shown = "not recorded" if newest_top5 is None else f"{newest_top5:.2f}"
        failures.append(
            f"{method} top-5 of the newest source {describe_entry(newest)} is {shown}, below --min-top5 {min_top5:g}"
        )
    return GateCheck(method, newest, newest_top1, best, top, tuple(failures))
