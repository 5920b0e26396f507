"""nnkcli.storage.atomic: the old file survives any failure; locks exclude other processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from nnkcli.storage.atomic import atomic_output, atomic_write_text, file_lock


def test_success_replaces(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_old_and_cleans_up(tmp_path, exc):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise exc()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_copy_existing_starts_from_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target, copy_existing=True) as tmp:
        assert tmp.read_text() == "old"
        tmp.write_text(tmp.read_text() + "+more")
    assert target.read_text() == "old+more"


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "x"):
            pass
    assert not (tmp_path / "x").exists()


def test_sigkill_mid_write_leaves_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    code = (
        "import sys, time\n"
        "from nnkcli.storage.atomic import atomic_output\n"
        f"with atomic_output({str(target)!r}) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'x' * 100000); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"


def _hold(path, started, release):
    with file_lock(path):
        started.set()
        release.wait(10)


def test_file_lock_excludes_another_process(tmp_path):
    path = tmp_path / "history.jsonl"
    ctx = multiprocessing.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(path), started, release))
    proc.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        import threading

        threading.Timer(0.5, release.set).start()
        with file_lock(path):
            waited = time.monotonic() - t0
        assert waited >= 0.4  # we only got the lock once the other process let go
    finally:
        release.set()
        proc.join(10)
    assert os.path.exists(f"{path}.lock")
