"""Per-source claims: no source is evaluated by two overlapping runs at once.

Before evaluating a source a run takes the claim of its sha256: the lock
``.<history>.<sha256[:16]>.claim.lock`` beside the history, held with the one flock
implementation (``nnkcli.storage.atomic.file_lock``). A run that finds a claim taken
moves on to its other sources and waits for that claim only at the end, then finds
the source recorded and skips it. The long evaluation therefore runs without the
history lock. The kernel drops the claim of a killed run; the lock file is removed
when the claim ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from nnkcli.errors import LockTimeout
from nnkcli.storage.atomic import file_lock, lock_path_for


def _claim_target(history_path: Path, sha256: str) -> Path:
    # never created: file_lock locks "<target>.lock" and removes it on release (remove_if_absent)
    return history_path.with_name(f".{history_path.name}.{sha256[:16]}.claim")


def claim_path(history_path: Path, sha256: str) -> Path:
    """The lock file that is the claim of a source (present only while it is held)."""
    return lock_path_for(_claim_target(history_path, sha256))


@contextlib.contextmanager
def claim(history_path: Path, sha256: str, *, blocking: bool) -> Iterator[bool]:
    """Hold the source's claim for the block; yields whether it was obtained.

    ``blocking=False`` gives up at once when another process holds it (yields False);
    ``blocking=True`` waits as long as it takes.
    """
    target = _claim_target(history_path, sha256)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(target, timeout=None if blocking else 0.0, remove_if_absent=True))
        except LockTimeout:
            yield False
            return
        yield True
