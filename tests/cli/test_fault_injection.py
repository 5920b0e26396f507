"""Fault injection: every writing command killed (SIGKILL), terminated (SIGTERM) and interrupted
(SIGINT) at seeded random moments.

For each kill the test checks that the file the command writes is either untouched (same sha256
as before) or complete and new (it finished before the signal), that a caught signal gave the
documented exit code (143, 130) and no traceback, and that the next, uninterrupted run succeeds
and leaves no temporary file behind (it sweeps those of the killed run). The data are small and
there are a few moments per command and signal, so the module stays quick.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from nnk_data import mixture
from nnk_outputs import is_complete, sha256_of, temp_names
from nnkcli.storage.store import write_split

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SEED = 13
#: (signal, moments per command); SIGKILL gets more, it is the one that can leave temp files
SIGNALS = [("SIGKILL", 2), ("SIGTERM", 1), ("SIGINT", 1)]
#: exit codes a run may end with: finished before the signal, the signal caught, or (SIGTERM
#: before the handlers are installed, in the first instants of start-up, when nothing is written)
#: the default action
ALLOWED = {"SIGKILL": {0, -9}, "SIGTERM": {0, 143, -15}, "SIGINT": {0, 130}}


# well separated classes; what matters here is the size (a run long enough to be killed mid-way)
_mixture = partial(mixture, n_classes=5, noise=1 / 3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    store = root / "feats.h5"
    x, y = _mixture(20000, 48, 0)
    write_split(store, "train", x, y, source="test")
    x, y = _mixture(1500, 48, 1)
    write_split(store, "val", x, y, source="test")
    big = root / "big.npy"
    np.save(big, _mixture(60000, 48, 2)[0])
    return root, store, big


def _commands(root: Path, store: Path, big: Path) -> dict:
    """command name -> (argv, the file it writes)."""
    extract_store = root / "extract.h5"
    return {
        "extract": (["extract", extract_store, "--split", "x", "--from", big, "--overwrite", "-q"], extract_store),
        "index": (["index", store, "--out", root / "i.faiss", "-q"], root / "i.faiss"),
        "classify": (
            ["classify", store, "--k", "40", "--index", root / "i.faiss", "--out", root / "p.h5", "-q"],
            root / "p.h5",
        ),
        "sweep": (
            ["sweep", store, "--k", "5..60:5", "--index", root / "i.faiss", "--plot", root / "s.png", "-q"],
            root / "s.png",
        ),
        "evaluate": (
            ["evaluate", store, "--history", root / "h.jsonl", "--k", "10,20", "--force", "-q"],
            root / "h.jsonl",
        ),
    }


def _argv(args) -> list[str]:
    return [sys.executable, "-m", "nnkcli", *map(str, args)]


def _run(args) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(args), env=ENV, capture_output=True, text=True, timeout=300)


#: the kind of file each command writes (see nnk_outputs.is_complete)
KINDS = {"evaluate": "jsonl", "sweep": "png", "index": "faiss", "extract": "h5", "classify": "h5"}


def _valid(name: str, path: Path) -> bool:
    """The written file is complete: readable by what reads it."""
    return is_complete(KINDS[name], path, index_rows=20000)


@pytest.mark.parametrize("name", ["extract", "index", "classify", "sweep", "evaluate"])
def test_killed_at_random_moments_loses_nothing(workspace, name):
    if name == "sweep":
        pytest.importorskip("matplotlib")
    root, store, big = workspace
    commands = _commands(root, store, big)
    if name in ("classify", "sweep") and not (root / "i.faiss").exists():
        assert _run(commands["index"][0]).returncode == 0
    argv, target = commands[name]
    t0 = time.monotonic()
    first = _run(argv)
    duration = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    rng = random.Random(f"{SEED}-{name}")
    for signame, moments in SIGNALS:
        for _ in range(moments):
            before = sha256_of(target)
            # from 0.5 s on: earlier, the interpreter itself may still be starting (a Ctrl-C in
            # Python's own site import is beyond any program); nnkcli's start-up is included
            delay = rng.uniform(0.5, max(0.6, duration))
            proc = subprocess.Popen(_argv(argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                proc.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(getattr(signal, signame))
            _, err = proc.communicate(timeout=120)
            case = f"{name} {signame} at {delay:.2f}s of {duration:.2f}s: rc {proc.returncode}"
            assert proc.returncode in ALLOWED[signame], f"{case}\n{err[-2000:]}"
            if proc.returncode in (130, 143):
                assert "Traceback" not in err and err.strip().splitlines()[-1] in (
                    "Interrupted.",
                    "Terminated (SIGTERM).",
                ), f"{case}\n{err[-2000:]}"
                assert temp_names(root) == [], f"{case}: a caught signal left {temp_names(root)}"
            after = sha256_of(target)
            assert after == before or _valid(name, target), f"{case}: {target.name} is damaged"
            rerun = _run(argv)
            assert rerun.returncode == 0, f"{case}: the rerun failed\n{rerun.stderr[-2000:]}"
            assert _valid(name, target)
            assert temp_names(root) == [], f"{case}: the rerun left {temp_names(root)}"
