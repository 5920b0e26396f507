"""`torchrun --nproc-per-node 2 -m nnkcli extract ...` (gloo, CPU) writes the store a single process writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.slow  # torchrun: two ranks, each a fresh interpreter

from nnkcli.cli import cli  # noqa: E402
from nnkcli.extract.distributed import rank_slice  # noqa: E402
from nnkcli.storage.store import FeatureStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
FAST = ["--resize", "16", "--crop", "12", "--workers", "0", "--device", "cpu", "--batch-size", "2"]


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(7)
    for c, count in (("ant", 4), ("bee", 4), ("cat", 3)):  # 11 images: uneven rank slices
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (14 + i, 13, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    return tmp_path / "imgs"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(store, image_dir, *extra, env=None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "nnkcli",
        "extract",
        str(store),
        "--split",
        "train",
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:slow_backbone",
        "--format",
        "json",
        *FAST,
        *extra,
    ]
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=240)


def _single(runner, store, image_dir):
    res = runner.invoke(
        cli,
        [
            "extract",
            str(store),
            "--split",
            "train",
            "--images",
            str(image_dir),
            "--model",
            "nnk_tinynets:slow_backbone",
            *FAST,
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.stderr


def _contents(store):
    with FeatureStore(store) as fs:
        sp = fs.split("train")
        attrs = {k: v for k, v in sp.attrs.items() if k != "created_at"}
        return sp.features[()].tobytes(), sp.labels.tolist(), sp.ids, fs.classes, sp.content_sha256, attrs


def test_rank_slices_are_contiguous_and_cover_once():
    for n in (0, 1, 5, 11, 1000):
        for world in (1, 2, 3, 7, 12):
            bounds = [rank_slice(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(runner, tmp_path, image_dir):
    _single(runner, tmp_path / "one.h5", image_dir)
    proc = _torchrun(tmp_path / "two.h5", image_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["ranks"] == 2 and summary["n"] == 11
    assert _contents(tmp_path / "one.h5") == _contents(tmp_path / "two.h5")
    assert not list(tmp_path.glob(".two.h5.*"))  # rank stores and partials are gone


#: the ranks' partial files of store two.h5 (what --resume reads)
PARTIALS = "*two.h5.train.rank-*-of-2*partial"


@pytest.mark.slow
def test_killed_rank_leaves_store_unchanged_and_resume_finishes(runner, tmp_path, image_dir):
    _single(runner, tmp_path / "one.h5", image_dir)
    store = tmp_path / "two.h5"
    log = tmp_path / "forwards.log"
    # both ranks log their forward passes; the model hangs once 4 are logged (2 per rank, the probe included)
    env = _env(NNK_TEST_FORWARD_LOG=str(log), NNK_TEST_FORWARD_HANG_AFTER="4")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "nnkcli",
        "extract",
        str(store),
        "--split",
        "train",
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:slow_backbone",
        *FAST,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        # the ranks write their first batch's rows after its forward pass is logged: on a loaded machine
        # that took longer than a fixed 0.3 s (CI saw no partial file), so wait for the rows themselves
        while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(PARTIALS)):
            time.sleep(0.05)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not store.exists()
    assert list(tmp_path.glob(PARTIALS))  # the ranks' rows are kept for --resume
    before = len(log.read_text().splitlines())
    done = _torchrun(store, image_dir, "--resume", env=_env(NNK_TEST_FORWARD_LOG=str(log)))
    assert done.returncode == 0, done.stderr[-3000:]
    # a fresh run makes 8 forward passes (a probe per rank, 3 batches of 2 per rank); resuming skips some
    assert len(log.read_text().splitlines()) - before < 8
    assert _contents(tmp_path / "one.h5") == _contents(store)
