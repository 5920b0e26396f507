"""``nnk sweep --tensorboard DIR --step N`` and ``nnk history --tensorboard DIR``: the event
files are read back with an independent reader and hold exactly the documents' numbers."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

import tfevents  # tests/helpers (pytest's pythonpath): an independent event-file reader
from nnkcli.cli import cli
from nnkcli.tracking.history import append_entry

pytest.importorskip("tensorboardX")


def test_crc32c_reference_value():
    # the check value of CRC-32C (RFC 3720, appendix B.4)
    assert tfevents.crc32c(b"123456789") == 0xE3069283


def test_sweep_writes_accuracy_vs_k(runner, sample_store, tmp_path):
    logdir = tmp_path / "tb"
    res = runner.invoke(
        cli,
        ["sweep", str(sample_store), "--k", "5,10,20", "--format", "json", "--tensorboard", str(logdir), "--step", "7"],
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["tensorboard"]["run"] == str(logdir / "sweep_step_7")
    curves = tfevents.scalars(logdir / "sweep_step_7")
    for row in doc["results"]:
        for metric in ("top1", "top5"):
            points = dict(curves[f"accuracy_vs_k/{row['method']}/{metric}"])
            assert points[row["k"]] == pytest.approx(row[metric], abs=1e-4)
    assert sorted(curves) == sorted(f"accuracy_vs_k/{m}/{t}" for m in ("nnk", "knn") for t in ("top1", "top5"))
    best = tfevents.scalars(logdir)
    for method, b in doc["best"].items():
        assert best[f"best/{method}/top1"] == [(7, pytest.approx(b["top1"], abs=1e-4))]
        assert best[f"best/{method}/k"] == [(7, b["k"])]


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_history_writes_best_and_selected_against_the_step(runner, tmp_path):
    path = tmp_path / "history.jsonl"
    rows = [(1, 20, 71.5, 70.0), (2, 10, 70.25, 70.5), (3, None, 71.0, 69.0)]
    for n, step, nnk, knn in rows:
        entry = {
            "source": f"/runs/ck{n}.pth",
            "sha256": _sha(n),
            "results": [],
            "best": {
                "nnk": {"k": 50 + n, "top1": nnk, "top5": 90.0 + n},
                "knn": {"k": 10 + n, "top1": knn, "top5": 88.0},
            },
            "finished_at": f"2024-01-0{n}T00:00:00.000+00:00",
        }
        if step is not None:
            entry["step"] = step
        if n == 2:
            entry["selected"] = {"nnk": {"k": 40, "top1": 69.5, "top5": 89.0}}
        append_entry(path, entry)
    logdir = tmp_path / "tb"
    res = runner.invoke(cli, ["history", str(path), "--tensorboard", str(logdir), "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert "1 history entries have no step" in res.stderr
    got = tfevents.scalars(logdir)
    # training order: step 10, step 20, then the entry without a step (position 3)
    assert got["best/nnk/top1"] == [(10, 70.25), (20, 71.5), (3, 71.0)]
    assert got["best/knn/k"] == [(10, 12.0), (20, 11.0), (3, 13.0)]
    assert got["best/nnk/top5"] == [(10, 92.0), (20, 91.0), (3, 93.0)]
    assert got["selected/nnk/top1"] == [(10, 69.5)]
    assert json.loads(res.stdout)["tensorboard"]["scalars"] == 3 * 2 * 3 + 3


def test_missing_extra_and_bad_usage(runner, sample_store, tmp_path, monkeypatch):
    res = runner.invoke(cli, ["sweep", str(sample_store), "--step", "3"])
    assert res.exit_code == 2 and "--tensorboard and --step go together" in res.stderr
    (tmp_path / "file").write_text("x")
    res = runner.invoke(cli, ["sweep", str(sample_store), "--tensorboard", str(tmp_path / "file"), "--step", "1"])
    assert res.exit_code in (1, 2)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    res = runner.invoke(cli, ["sweep", str(sample_store), "--tensorboard", str(tmp_path / "tb"), "--step", "1"])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: --tensorboard needs the optional 'tensorboard' extra, which is not installed",
        'Hint: pip install "nnkcli[tensorboard]"',
    ]
    assert not (tmp_path / "tb").exists()


# -- a full disk: a clean error, no traceback from a writer thread, no event file left -----------
def _history(path, n=3):
    for i in range(1, n + 1):
        entry = {
            "source": f"/runs/ck{i}.pth",
            "sha256": _sha(i),
            "results": [],
            "step": i,
            "best": {"nnk": {"k": 10, "top1": 70.0 + i, "top5": 90.0}},
            "finished_at": f"2024-01-0{i}T00:00:00.000+00:00",
        }
        append_entry(path, entry)
    return path


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to the last byte (mounting needs root: skipped otherwise)."""
    import os
    import shutil
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mnt / "tb").mkdir()
        (mnt / "tb" / "events.out.tfevents.1700000000.earlier").write_bytes(b"an earlier run's events")
        with open(mnt / "ballast", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _tree(folder):
    """Every path under ``folder`` -> the sha256 of a file's bytes ("" for a folder)."""
    return {
        p.relative_to(folder).as_posix(): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("logdir", ["tb", "new/tb"])
def test_history_and_sweep_on_a_full_disk(full_disk, sample_store, tmp_path, logdir):
    from nnk_crafted import error_lines, run_bounded

    history = _history(tmp_path / "history.jsonl")
    before_history = history.read_bytes()
    before = _tree(full_disk)
    target = full_disk / logdir
    for args in (
        ["history", history, "--tensorboard", target],
        ["sweep", sample_store, "--k", "5,10", "--tensorboard", target, "--step", "3"],
    ):
        done = run_bounded(*args)
        assert done.returncode == 1, done.stderr
        assert error_lines(done.stderr) == [
            f"Error: no space left on device while writing event files in "
            f"{target / 'sweep_step_3' if args[0] == 'sweep' else target}",
            "Hint: free some space (or write to another disk) and rerun; the old file, if any, is intact",
        ]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        assert _tree(full_disk) == before  # the earlier event file intact; no new file, no new folder
    assert history.read_bytes() == before_history


def test_a_failure_on_the_second_event_file_removes_the_first(runner, sample_store, tmp_path, monkeypatch):
    import errno

    from nnkcli import tensorboard_log

    calls = []
    real = tensorboard_log._EventFiles._write

    def failing(self, logdir, events):
        calls.append(logdir)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, logdir, events)

    monkeypatch.setattr(tensorboard_log._EventFiles, "_write", failing)
    logdir = tmp_path / "tb"
    res = runner.invoke(cli, ["sweep", str(sample_store), "--k", "5", "--tensorboard", str(logdir), "--step", "1"])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-1] == f"Error: cannot write event files in {logdir}: Input/output error"
    assert calls == [logdir / "sweep_step_1", logdir]
    assert not logdir.exists()


def test_a_killed_writers_temporary_event_file_is_removed(runner, tmp_path):
    history = _history(tmp_path / "history.jsonl")
    logdir = tmp_path / "tb"
    logdir.mkdir()
    dead = logdir / ".events.out.tfevents.1700000000.host.123.tmp-999999999-abcd1234"
    dead.write_bytes(b"half")
    res = runner.invoke(cli, ["history", str(history), "--tensorboard", str(logdir)])
    assert res.exit_code == 0, res.stderr
    assert not dead.exists()
    assert [p.name.startswith("events.out.tfevents.") for p in logdir.iterdir()] == [True]
    assert tfevents.scalars(logdir)["best/nnk/top1"] == [(1, 71.0), (2, 72.0), (3, 73.0)]


def test_writing_scalars_does_not_import_torch(tmp_path):
    """tensorboardX imports torch whenever it is installed (2 s, and the CUDA build maps GBs of address
    space: a memory-capped sweep --tensorboard failed to load faiss after it); nnkcli writes scalars only."""
    import subprocess

    pytest.importorskip("torch")
    code = (
        "import sys; from nnkcli.tensorboard_log import _tensorboardx; _tensorboardx(); "
        "print('torch' in sys.modules, sys.modules.get('torch', 0) is None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # not imported, and no blocking entry left behind
