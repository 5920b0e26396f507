"""TensorBoard scalars of sweeps and histories (the only module that imports tensorboardX).

Layout written under the log folder ``DIR``::

    DIR/                      best/<method>/top1, best/<method>/top5, best/<method>/k
                              (and selected/<method>/... when the history records a
                              selected k), quality/<metric> (the quality metrics of
                              ``nnk evaluate --quality``), one point per step
    DIR/sweep_step_<N>/       accuracy_vs_k/<method>/top1, .../top5, one point per k

so the runs ``sweep_step_*`` overlay as accuracy-versus-k curves of each checkpoint and
the top folder tracks the best accuracy over training. tensorboardX writes plain event
files (no TensorFlow, no torch); it is the optional ``tensorboard`` extra.

Each event file is written whole, synchronously, to a temporary file beside its final
name and moved into place once complete (tensorboardX's ``SummaryWriter`` writes from a
thread and closes at exit, so a full disk left 0-byte or half-written files and tracebacks
from that thread). A failure removes what this call wrote, folders it created included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from nnkcli.errors import InputError, MissingDependencyError, NnkError
from nnkcli.storage.atomic import (
    TMP_MARKER,
    discard_temp,
    forget_temp,
    fsync_dir,
    fsync_file,
    output_error,
    remove_dead_temps,
    temp_path_for,
)

logger = logging.getLogger("nnkcli")

#: the largest step an event file stores (an int64)
MAX_STEP = 2**63 - 1
#: per-method summaries of a history entry, written when present
SUMMARIES = ("best", "selected")
_EVENTS = "events.out.tfevents."


def _tensorboardx():
    """tensorboardX's record writer and protocol buffers (the optional ``tensorboard`` extra).

    tensorboardX's writer imports torch whenever it is installed, only to accept tensors; the
    scalars written here are floats, and torch costs seconds to import (the CUDA build also maps
    gigabytes of address space). So while tensorboardX is first imported, and torch is not
    already loaded, ``import torch`` is made to fail for it; the blocking entry is removed after.
    """
    import sys

    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # type: ignore[assignment]  # an ImportError for tensorboardX's try
    try:
        import tensorboardX  # noqa: F401  (the package itself: its submodules may be cached without it)
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import RecordWriter
        from tensorboardX.summary import scalar
    except ImportError:
        raise MissingDependencyError("--tensorboard", "tensorboard") from None
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return RecordWriter, event_pb2, scalar


def check_logdir(logdir: str | os.PathLike) -> Path:
    """Fail before a long computation: tensorboardX installed, ``logdir`` a folder or creatable."""
    _tensorboardx()
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise InputError(f"--tensorboard {path} exists and is not a folder", hint="give a folder for the event files")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise InputError(
            f"cannot write event files under {parent}: permission denied", hint="choose a writable --tensorboard folder"
        )
    return path


class _EventFiles:
    """The event files of one call, each kept in memory (a few hundred scalars) until :meth:`commit`
    writes every one to a temporary file and moves it into place; a failure removes them all and
    the folders this call created."""

    def __init__(self):
        self.files: dict[Path, list[bytes]] = {}
        self.n = 0
        self._created: list[Path] = []
        self._placed: list[Path] = []
        self._record_writer, self._event_pb2, self._scalar = _tensorboardx()

    def folder(self, logdir: Path) -> Path:
        """Start an event file in ``logdir`` (made at commit); returns ``logdir`` as its key."""
        self.files.setdefault(logdir, [])
        return logdir

    def scalar(self, logdir: Path, tag: str, value, step: int) -> None:
        if not -(2**63) <= int(step) < 2**63:
            raise InputError(f"step {step} does not fit TensorBoard's steps (64-bit integers)")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            event = self._event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=self._scalar(tag, float(value))
            )
            self.files[logdir].append(event.SerializeToString())
            self.n += 1

    def commit(self) -> None:
        folder = next(iter(self.files), Path("."))
        try:
            for folder, events in self.files.items():
                self._mkdir(folder)
                self._write(folder, events)
        except BaseException as exc:
            for path in self._placed:
                with contextlib.suppress(OSError):
                    path.unlink()
            for created in reversed(self._created):
                with contextlib.suppress(OSError):
                    created.rmdir()
            if isinstance(exc, OSError):
                err = output_error(exc, folder, "event files in")
                if err is not None:
                    raise err from None
                raise NnkError(f"cannot write event files in {folder}: {exc.strerror or exc}") from None
            raise

    def _mkdir(self, logdir: Path) -> None:
        missing = [p for p in (logdir, *logdir.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)

    def _write(self, logdir: Path, events: list[bytes]) -> None:
        _remove_dead_event_temps(logdir)
        path = _free_name(logdir)
        tmp = temp_path_for(path)
        try:
            writer = self._record_writer(str(tmp))
            try:
                header = self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
                writer.write(header.SerializeToString())
                for event in events:
                    writer.write(event)
                writer.flush()
            finally:
                writer.close()
            fsync_file(tmp)
            os.replace(tmp, path)
            forget_temp(tmp)
            self._placed.append(path)
            fsync_dir(logdir)
        except BaseException:
            discard_temp(tmp)
            raise


def _free_name(logdir: Path) -> Path:
    """A new event file name in ``logdir``: tensorboardX's ``events.out.tfevents.<time>.<host>``, and
    this process's id (two writes within one second never share a file)."""
    stem = f"{_EVENTS}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    path, n = logdir / stem, 1
    while path.exists():
        path, n = logdir / f"{stem}.{n}", n + 1
    return path


def _remove_dead_event_temps(logdir: Path) -> None:
    """Temporary event files of killed writers in ``logdir`` (``.events.out.tfevents.*.tmp-PID-*``)."""
    with contextlib.suppress(OSError):
        for tmp in logdir.glob(f".{_EVENTS}*{TMP_MARKER}*"):
            remove_dead_temps(logdir / tmp.name[1:].rsplit(TMP_MARKER, 1)[0])


def write_sweep(doc: dict, logdir: str | os.PathLike, step: int) -> dict:
    """Accuracy versus k of one sweep document (run ``sweep_step_<step>``) and its best k at ``step``.

    Returns
    -------
    dict : ``{"logdir": str, "run": str, "scalars": int}``
    """
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be an integer in [0, {MAX_STEP}] (TensorBoard's int64), got {step!r}")
    root = check_logdir(logdir)
    run = root / f"sweep_step_{int(step)}"
    files = _EventFiles()
    curves, best = files.folder(run), files.folder(root)
    for row in doc["results"]:
        for metric in ("top1", "top5"):
            files.scalar(curves, f"accuracy_vs_k/{row['method']}/{metric}", row.get(metric), row["k"])
    for method, b in doc.get("best", {}).items():
        for metric in ("top1", "top5", "k"):
            files.scalar(best, f"best/{method}/{metric}", b.get(metric), step)
    files.commit()
    return {"logdir": str(root), "run": str(run), "scalars": files.n}


def write_history(entries: Sequence[dict], methods: Sequence[str], logdir: str | os.PathLike) -> dict:
    """best (and selected) top-1/top-5/k per method, and ``quality/<metric>`` where recorded,
    against each entry's step.

    ``entries`` are in training order (``order_entries``); an entry without a step (or with one
    TensorBoard cannot store: beyond an int64) is written at its position in that order (1, 2,
    ...), with a warning.
    """
    root = check_logdir(logdir)
    files = _EventFiles()
    out = files.folder(root)
    unstepped = 0
    for position, entry in enumerate(entries, start=1):
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
            step, unstepped = position, unstepped + 1
        for summary in SUMMARIES:
            per_method = entry.get(summary)
            if not isinstance(per_method, dict):
                continue
            for method in methods:
                values = per_method.get(method)
                if isinstance(values, dict):
                    for metric in ("top1", "top5", "k"):
                        files.scalar(out, f"{summary}/{method}/{metric}", values.get(metric), step)
        quality = entry.get("quality")
        if isinstance(quality, dict):  # None (a metric not measured) and NaN write nothing
            for metric, value in quality.items():
                files.scalar(out, f"quality/{metric}", value, step)
    files.commit()
    if unstepped:
        logger.warning(f"{unstepped} history entries have no step; written at their position in training order")
    return {"logdir": str(root), "scalars": files.n}
