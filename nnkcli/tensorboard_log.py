"""TensorBoard scalars of sweeps and histories (the only module that imports tensorboardX).

Layout written under the log folder ``DIR``::

    DIR/                      best/<method>/top1, best/<method>/top5, best/<method>/k
                              (and selected/<method>/... when the history records a
                              selected k), one point per step
    DIR/sweep_step_<N>/       accuracy_vs_k/<method>/top1, .../top5, one point per k

so the runs ``sweep_step_*`` overlay as accuracy-versus-k curves of each checkpoint and
the top folder tracks the best accuracy over training. tensorboardX writes plain event
files (no TensorFlow, no torch); it is the optional ``tensorboard`` extra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from nnkcli.errors import InputError, MissingDependencyError, NnkError

logger = logging.getLogger("nnkcli")

#: the largest step an event file stores (an int64)
MAX_STEP = 2**63 - 1
#: per-method summaries of a history entry, written when present
SUMMARIES = ("best", "selected")


def _writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise MissingDependencyError("--tensorboard", "tensorboard") from None
    return SummaryWriter


def check_logdir(logdir: str | os.PathLike) -> Path:
    """Fail before a long computation: tensorboardX installed, ``logdir`` a folder or creatable."""
    _writer_class()
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise InputError(f"--tensorboard {path} exists and is not a folder", hint="give a folder for the event files")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise InputError(
            f"cannot write event files under {parent}: permission denied", hint="choose a writable --tensorboard folder"
        )
    return path


class _Writer:
    def __init__(self, logdir: Path):
        try:
            logdir.mkdir(parents=True, exist_ok=True)
            self.writer = _writer_class()(logdir=str(logdir))
        except OSError as exc:
            raise NnkError(f"cannot write event files to {logdir}: {exc.strerror or exc}") from None
        self.n = 0

    def scalar(self, tag: str, value, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            self.writer.add_scalar(tag, float(value), global_step=int(step))
            self.n += 1

    def close(self) -> None:
        try:
            self.writer.flush()
            self.writer.close()
        except OSError as exc:
            raise NnkError(f"cannot write event files: {exc.strerror or exc}") from None


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
    curves = _Writer(run)
    try:
        for row in doc["results"]:
            for metric in ("top1", "top5"):
                curves.scalar(f"accuracy_vs_k/{row['method']}/{metric}", row.get(metric), row["k"])
    finally:
        curves.close()
    best = _Writer(root)
    try:
        for method, b in doc.get("best", {}).items():
            for metric in ("top1", "top5", "k"):
                best.scalar(f"best/{method}/{metric}", b.get(metric), step)
    finally:
        best.close()
    return {"logdir": str(root), "run": str(run), "scalars": curves.n + best.n}


def write_history(entries: Sequence[dict], methods: Sequence[str], logdir: str | os.PathLike) -> dict:
    """best (and selected) top-1/top-5/k per method against each entry's step.

    ``entries`` are in training order (``order_entries``); an entry without a step (or with one
    TensorBoard cannot store: beyond an int64) is written at its position in that order (1, 2,
    ...), with a warning.
    """
    root = check_logdir(logdir)
    out = _Writer(root)
    unstepped = 0
    try:
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
                            out.scalar(f"{summary}/{method}/{metric}", values.get(metric), step)
    finally:
        out.close()
    if unstepped:
        logger.warning(f"{unstepped} history entries have no step; written at their position in training order")
    return {"logdir": str(root), "scalars": out.n}
