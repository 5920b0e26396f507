"""Checks of what a command left in its folder (shared by the tests that interrupt commands)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: the marker in the names of nnkcli's temporary files and folders (``.NAME.tmp-PID-TOKEN``)
TMP_MARKER = ".tmp-"


def temp_names(folder: Path) -> list[str]:
    """The temporary files and folders in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if TMP_MARKER in p.name)


def sha256_of(path: Path) -> str | None:
    """The file's sha256, or None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def is_complete(kind: str, path: Path, *, index_rows: int) -> bool:
    """The written file is complete, read by what reads it: a history (``jsonl``), a plot
    (``png``), an index of ``index_rows`` vectors (``faiss``), or an HDF5 file (``h5``)."""
    if kind == "jsonl":
        return all(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    if kind == "png":
        return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if kind == "faiss":
        from nnkcli.index import load_index

        return load_index(path).n == index_rows
    import h5py

    with h5py.File(path, "r") as f:
        return len(f.keys()) > 0
