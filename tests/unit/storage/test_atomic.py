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


# -- lock waits, timeouts, lock files of refused writes, symlinks (hardening) ----------------
from nnkcli.errors import LockTimeout, OutputError  # noqa: E402
from nnkcli.storage.atomic import check_can_create, lock_path_for, remove_dead_temps  # noqa: E402

_HOLD = (
    "import sys, time\n"
    "from nnkcli.storage.atomic import file_lock\n"
    "with file_lock(sys.argv[1]):\n"
    "    print('held', flush=True); time.sleep(30)\n"
)


def _holder(path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_held_lock_is_reported_after_a_second_and_times_out(tmp_path, caplog):
    path = tmp_path / "feats.h5"
    proc = _holder(path)
    try:
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="nnkcli"), pytest.raises(LockTimeout) as info:
            with file_lock(path, timeout=1.5):
                pytest.fail("the lock was taken while another process held it")
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert 1.4 <= waited < 10
    assert f"waiting for the lock {path}.lock, held by pid {proc.pid}" in caplog.text
    assert info.value.message.startswith("timed out after ")
    assert info.value.message.endswith(f" s waiting for the lock {path}.lock, held by pid {proc.pid}")
    with file_lock(path, timeout=0):  # the holder is gone: taken at once
        pass


def test_cli_lock_timeout(runner, tmp_path):
    from nnkcli.cli import cli

    store = tmp_path / "feats.h5"
    npy = tmp_path / "f.npy"
    import numpy as np

    np.save(npy, np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    proc = _holder(store)
    try:
        result = runner.invoke(
            cli, ["extract", str(store), "--split", "x", "--from", str(npy), "--lock-timeout", "0.2"]
        )
    finally:
        proc.kill()
        proc.wait()
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2].startswith(f"Error: timed out after 0 s waiting for the lock {store}.lock")
    assert not store.exists()
    bad = runner.invoke(cli, ["extract", str(store), "--split", "x", "--from", str(npy), "--lock-timeout", "-1"])
    assert bad.exit_code == 2 and "--lock-timeout" in bad.stderr


def test_a_refused_first_write_leaves_no_lock_file(tmp_path):
    import numpy as np

    from nnkcli.errors import InputError
    from nnkcli.storage.store import write_split

    x = np.ones((5, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_split(tmp_path / "new.h5", "train", x, source="t")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_deleted_by_its_holder_is_never_held_twice(tmp_path):
    path = tmp_path / "x"
    with file_lock(path, remove_if_absent=True):
        pass
    assert not lock_path_for(path).exists()  # path absent: the lock file went with it
    path.write_text("now it exists")
    with file_lock(path, remove_if_absent=True):
        pass
    assert lock_path_for(path).exists()


def test_locks_and_writes_follow_symlinks(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert lock_path_for(link) == lock_path_for(real)


def test_dead_temps_are_removed_live_ones_kept(tmp_path):
    dest = tmp_path / "out.bin"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".out.bin.tmp-{proc.pid}-00000000"
    dead.write_bytes(b"x")
    live = tmp_path / f".out.bin.tmp-{os.getpid()}-11111111"
    live.write_bytes(b"y")
    other = tmp_path / f".out.bin2.tmp-{proc.pid}-22222222"  # another destination's temp
    other.write_bytes(b"z")
    assert remove_dead_temps(dest) == [dead]
    assert live.exists() and other.exists()


def test_check_can_create_names_the_problem(tmp_path):
    with pytest.raises(OutputError, match="folder not found for the index file"):
        check_can_create(tmp_path / "missing" / "i.faiss", "index")
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a folder, not a file"):
        check_can_create(tmp_path / "d", "index")
    assert check_can_create(tmp_path / "ok.faiss", "index") == tmp_path / "ok.faiss"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # the probe is gone


def test_remove_own_temps_removes_what_this_process_named_and_left(tmp_path, monkeypatch):
    from nnkcli.storage import atomic

    monkeypatch.setattr(atomic, "_OWN_TEMPS", {})
    left_file = atomic.temp_path_for(tmp_path / "a.h5")
    left_file.write_bytes(b"half")
    left_dir = atomic.temp_path_for(tmp_path / "b.h5.train")
    left_dir.mkdir()
    (left_dir / "features.bin").write_bytes(b"rows")
    never_made = atomic.temp_path_for(tmp_path / "c.h5")
    finished = tmp_path / "d.txt"
    atomic_write_text(finished, "done")  # its temporary path was moved into place and forgotten
    # a forked child inherits the record: it must not remove its parent's live files
    parents = tmp_path / ".e.h5.tmp-1-abcd"
    parents.write_bytes(b"parent's")
    atomic._OWN_TEMPS[parents] = os.getpid() + 1

    removed = atomic.remove_own_temps()
    assert sorted(removed) == sorted([left_file, left_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".e.h5.tmp-1-abcd", "d.txt"]
    assert never_made not in atomic._OWN_TEMPS and atomic.remove_own_temps() == []


def test_an_interrupted_writability_probe_leaves_no_file(tmp_path, monkeypatch):
    from nnkcli.storage import atomic

    real_close = os.close

    def close_then_interrupt(fd):
        real_close(fd)
        raise KeyboardInterrupt  # a Ctrl-C between the probe's creation and its removal

    monkeypatch.setattr(atomic.os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.check_can_create(tmp_path / "out.h5")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
