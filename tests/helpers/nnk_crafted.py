"""Checking that a crafted input is refused cleanly: the ``Error:``/``Hint:`` lines, the files of a
folder (names and content) before and after, and a run in a subprocess bounded in memory and time."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def state(folder: Path) -> dict[str, str]:
    """File name -> sha256 of its bytes, for every entry of ``folder`` (nothing changed, nothing added)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def run_bounded(*args, memory: int = 3 * 2**29, timeout: float = 60) -> subprocess.CompletedProcess:
    """``nnk ARGS`` in a subprocess with ``memory`` bytes of address space and ``timeout`` seconds."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
    code = limit + "import sys; from nnkcli.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
