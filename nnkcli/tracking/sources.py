"""The sources of one ``nnk evaluate`` run, and what identifies each.

A source is a feature store or a training checkpoint. It is identified by the sha256
of its content (so a copy under another name is the same source), stamped with
device/inode/size/mtime (so a file rewritten while it is evaluated is noticed), and
placed in training order by its step: the counter a checkpoint records (read by the
extract package, the only torch owner) or else a number in its file name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from nnkcli.errors import InputError
from nnkcli.storage.checks import sha256_file

__all__ = ["STORE_SUFFIXES", "collect_sources", "file_stamp", "is_store", "read_step", "sha256_file", "step_from_name"]

STORE_SUFFIXES = (".h5", ".hdf5")
#: the largest training step: an int64, what TensorBoard (and most trackers) store; a larger
#: number in a file name or a checkpoint is not taken for a step
MAX_STEP = 2**63 - 1

# `checkpoint0040.pth`, `epoch_12.pt`, `epoch=3-step=500.ckpt`, `step-5000`, `model_iter_800`
_NAME_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(epoch|global_step|step|iteration|iter|it|ep)[_\-=]?(\d+)(?!\d)", re.IGNORECASE),
    re.compile(r"(?:^|[^a-z])(checkpoint|ckpt|model|weights)[_\-=]?(\d+)(?!\d)", re.IGNORECASE),
)
_ALL_DIGITS = re.compile(r"^\d+$")


def collect_sources(
    paths: Sequence[str | os.PathLike] = (),
    *,
    watch_dir: str | os.PathLike | None = None,
    pattern: str = "*.h5",
) -> list[Path]:
    """The sources of one run: the given files, then the files in ``watch_dir`` matching ``pattern``.

    Hidden files are left out (they are the temporary files of atomic writers).
    Duplicates (the same file named twice) are dropped. Raises ``InputError`` for a
    named file that does not exist or a watch directory that is not a directory.
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(f"source not found: {p}")
        if p.is_dir():
            raise InputError(f"source is a directory: {p}", hint="use --watch-dir DIR --pattern GLOB for a folder")
        found.append(p)
    if watch_dir is not None:
        d = Path(watch_dir)
        if not d.is_dir():
            raise InputError(f"--watch-dir is not a directory: {d}")
        found.extend(sorted(f for f in d.glob(pattern) if f.is_file() and not f.name.startswith(".")))
    unique: list[Path] = []
    seen: set[Path] = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def is_store(path: Path) -> bool:
    """Whether a source is a feature store (by suffix and the HDF5 signature)."""
    if path.suffix.lower() in STORE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def file_stamp(path: Path) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): changes when a file is rewritten or replaced."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


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
        ...; ``"name"`` for a name that is only digits), or None (also for a number
        beyond ``MAX_STEP``, which no tracker stores).

    Examples
    --------
    >>> step_from_name("checkpoint0040.pth")
    (40, 'checkpoint')
    >>> step_from_name("runs/epoch=3-step=500.ckpt")
    (3, 'epoch')
    """
    file_name = Path(name).name
    stem = file_name.split(".", 1)[0]
    found = None
    if _ALL_DIGITS.match(stem):
        found = int(stem), "name"
    for pattern in _NAME_STEP_PATTERNS if found is None else ():
        match = pattern.search(file_name)
        if match:
            found = int(match.group(2)), match.group(1).lower()
            break
    return found if found is not None and found[0] <= MAX_STEP else None


def read_step(path: Path, checkpoint: bool) -> tuple[int | None, str | None]:
    """(step, where it came from): ``checkpoint:<key>``, ``name:<word>``, or (None, None)."""
    found = None
    if checkpoint:
        from nnkcli.extract.torch_checkpoints import read_checkpoint_step

        found = read_checkpoint_step(path)
    if found is not None and 0 <= found[0] <= MAX_STEP:
        return found[0], f"checkpoint:{found[1]}"
    found = step_from_name(path.name)
    if found is not None:
        return found[0], f"name:{found[1]}"
    return None, None
