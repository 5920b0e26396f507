"""A hostile environment: a full disk, a read-only folder, symlinks, dead temporary files, a closed
pipe, signals. Each case is a clean ``Error:`` + ``Hint:``, the documented exit code, the old file
intact and nothing left behind.

Full disks and read-only folders are real tmpfs mounts (the tests need root to mount them and are
skipped otherwise); the cases where HDF5 itself runs out of space go through the real h5py and
faiss write paths, in a subprocess, because before the fix they crashed the interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from nnk_data import mixture
from nnkcli.cli import cli
from nnkcli.storage.store import FeatureStore, write_split

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# -- helpers ---------------------------------------------------------------------------------
# well separated classes; the sizes matter here (they fill the small disk), not the values
_mixture = partial(mixture, noise=1 / 3)
pytestmark = pytest.mark.store(n_train=3000, n_query=400, d=32, noise=1 / 3, class_names=None)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _nnk(*args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnkcli", *map(str, args)],
        env=ENV,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120, **kwargs)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock"))


def _mount_tmpfs(path: Path, size: str = "8m") -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs."""
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt)
    yield mnt
    _umount(mnt)


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs (chmod cannot stop root, a read-only mount does)."""
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "1m")
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    if done.returncode != 0:
        _umount(mnt)
        pytest.skip("cannot remount read-only")
    yield mnt
    _umount(mnt)


def _fill(folder: Path, leave_bytes: int = 0) -> None:
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave_bytes
    with open(folder / "ballast", "wb") as f:
        while free > 0:
            chunk = min(free, 1 << 20)
            try:
                f.write(b"\0" * chunk)
                f.flush()
            except OSError:
                break
            free -= chunk


# the free-space pre-flight check switched off, so that HDF5/faiss really hit the full disk
_NO_PRECHECK = (
    "import nnkcli.storage.store as st, nnkcli.index as ix\n"
    "st.check_free_space = ix.check_free_space = lambda *a, **k: None\n"
    "from nnkcli.cli import main\n"
)


# -- full disk -------------------------------------------------------------------------------
def test_extract_on_a_full_disk_is_a_clean_error_through_real_h5py(small_disk, tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).random((40000, 64), dtype=np.float32))  # 10 MiB > 8 MiB disk
    target = small_disk / "new.h5"
    done = _python(_NO_PRECHECK + f"main(['extract', {str(target)!r}, '--split', 'x', '--from', {str(big)!r}])")
    assert done.returncode == 1, done.stderr  # was 139: a segmentation fault in HDF5
    assert _errors(done.stderr)[0] == f"Error: no space left on device while writing store {target}"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == []  # no temp file, no empty lock file


def test_extract_that_does_not_fit_keeps_the_old_store(small_disk, tmp_path):
    target = small_disk / "s.h5"
    x, _ = _mixture(10000, 64, 0)  # 2.5 MiB
    write_split(target, "train", x, source="test")
    before = _sha(target)
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(1).random((30000, 64), dtype=np.float32))
    for code in ("", _NO_PRECHECK):  # the pre-flight check, then the real write path
        if code:
            done = _python(code + f"main(['extract', {str(target)!r}, '--split', 'y', '--from', {str(big)!r}])")
        else:
            done = _nnk("extract", target, "--split", "y", "--from", big)
        assert done.returncode == 1, done.stderr
        assert _errors(done.stderr)[0].startswith(f"Error: no space left on device while writing store {target}")
        assert _sha(target) == before
        assert _leftovers(small_disk) == ["s.h5.lock"]


@pytest.mark.slow
def test_index_classify_out_and_sweep_plot_on_a_full_disk(small_disk, store):
    pytest.importorskip("matplotlib")
    out = small_disk / "i.faiss"
    pred = small_disk / "p.h5"
    plot = small_disk / "p.png"
    _fill(small_disk, leave_bytes=200_000)
    for code in ("", _NO_PRECHECK):
        args = [["index", store, "--out", out], ["classify", store, "--k", "30", "--out", pred]]
        for argv in args:
            if code:
                done = _python(code + f"main({[str(a) for a in argv]!r})")
            else:
                done = _nnk(*argv)
            assert done.returncode == 1, done.stderr
            name = "index" if argv[0] == "index" else "predictions"
            assert _errors(done.stderr)[0].startswith(f"Error: no space left on device while writing {name} ")
            assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    (small_disk / "ballast").rename(small_disk / "ballast1")
    _fill(small_disk)  # now completely full: even a small plot cannot be written
    done = _nnk("sweep", store, "--k", "5,10", "--plot", plot)
    assert done.returncode == 1, done.stderr
    assert _errors(done.stderr)[0] == f"Error: no space left on device while writing plot {plot}"
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast", "ballast1"]


def test_stdout_on_a_full_disk(small_disk, store):
    _fill(small_disk)
    with open(small_disk / "out.json", "w") as out:
        done = _nnk("info", store, "--format", "json", stdout=out)
    assert done.returncode == 1
    assert _errors(done.stderr)[0] == "Error: no space left on device while writing standard output"


# -- read-only folders -------------------------------------------------------------------------
def test_unwritable_destinations_fail_before_the_work(read_only, store, tmp_path):
    pytest.importorskip("matplotlib")
    npy = tmp_path / "f.npy"
    np.save(npy, _mixture(50, 8, 0)[0])
    cases = [
        (["extract", read_only / "s.h5", "--split", "x", "--from", npy], f"store {read_only / 's.h5'}"),
        (["index", store, "--out", read_only / "i.faiss"], f"index {read_only / 'i.faiss'}"),
        (["classify", store, "--k", "5", "--out", read_only / "p.h5"], f"predictions {read_only / 'p.h5'}"),
        (["sweep", store, "--k", "5", "--plot", read_only / "p.png"], f"plot {read_only / 'p.png'}"),
    ]
    for argv, name in cases:
        t0 = time.monotonic()
        done = _nnk(*argv)
        assert done.returncode == 1, (argv, done.stderr)
        assert _errors(done.stderr) == [
            f"Error: cannot write {name}: read-only file system",
            "Hint: choose a writable location, or fix the folder's permissions",
        ], argv
        assert "the index" not in done.stderr and "classifying" not in done.stderr  # nothing was computed
        assert time.monotonic() - t0 < 60


def test_index_beside_a_read_only_store_fails_before_building(runner, read_only, store, monkeypatch):
    ro_store = read_only.parent / "ro_store"
    ro_store.mkdir()
    subprocess.run(["mount", "-o", "remount,rw", str(read_only)], check=True)
    shutil.copy(store, read_only / "feats.h5")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    import nnkcli.index as ix

    monkeypatch.setattr(ix, "build_index", lambda *a, **k: pytest.fail("the index was built before the check"))
    result = runner.invoke(cli, ["index", str(read_only / "feats.h5")])
    assert result.exit_code == 1
    assert (
        _errors(result.stderr)[0]
        == f"Error: cannot write index {read_only / 'feats.train.faiss'}: read-only file system"
    )


# -- symlinks and dead temporary files -------------------------------------------------------
def test_symlinked_store_is_written_through(runner, tmp_path):
    real = tmp_path / "real" / "feats.h5"
    real.parent.mkdir()
    x, y = _mixture(200, 8, 0)
    write_split(real, "train", x, y, source="test")
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    write_split(link, "val", x[:50], y[:50], source="test")
    assert link.is_symlink() and os.readlink(link) == str(real)
    with FeatureStore(real) as fs:
        assert fs.splits == ["train", "val"]
    assert not (tmp_path / "link.h5.lock").exists()  # the lock is the real file's
    assert (real.parent / "feats.h5.lock").exists()


def test_symlinked_index_and_predictions_are_written_through(runner, store, tmp_path):
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    for name in ("i.faiss", "p.h5"):
        (target_dir / name).write_bytes(b"old")
        (tmp_path / f"link-{name}").symlink_to(target_dir / name)
    assert runner.invoke(cli, ["index", str(store), "--out", str(tmp_path / "link-i.faiss")]).exit_code == 0
    result = runner.invoke(
        cli,
        [
            "classify",
            str(store),
            "--k",
            "5",
            "--index",
            str(tmp_path / "link-i.faiss"),
            "--out",
            str(tmp_path / "link-p.h5"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    for name in ("i.faiss", "p.h5"):
        assert (tmp_path / f"link-{name}").is_symlink()
        assert (target_dir / name).stat().st_size > 100


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["index", "classify", "sweep"])
def test_every_atomic_write_sweeps_the_temps_of_killed_runs(runner, store, tmp_path, command):
    if command == "sweep":
        pytest.importorskip("matplotlib")
    dest = {"index": tmp_path / "i.faiss", "classify": tmp_path / "p.h5", "sweep": tmp_path / "p.png"}[command]
    dead = tmp_path / f".{dest.name}.tmp-{_dead_pid()}-deadbeef"
    dead.write_bytes(b"x" * 1000)
    live = tmp_path / f".{dest.name}.tmp-{os.getpid()}-cafecafe"  # a live writer's file is left alone
    live.write_bytes(b"y")
    argv = {
        "index": ["index", str(store), "--out", str(dest)],
        "classify": ["classify", str(store), "--k", "5", "--out", str(dest)],
        "sweep": ["sweep", str(store), "--k", "5", "--plot", str(dest)],
    }[command]
    result = runner.invoke(cli, argv)
    assert result.exit_code == 0, result.stderr
    assert dest.exists() and not dead.exists() and live.exists()


# -- pipes, stdout, signals --------------------------------------------------------------------
def test_closed_pipe_is_a_quiet_exit_0(store):
    script = f"set -o pipefail; {sys.executable} -m nnkcli info {store} --format json | head -c 1 >/dev/null"
    done = subprocess.run(["bash", "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    big = f"set -o pipefail; {sys.executable} -m nnkcli info {store} | head -1"
    done = subprocess.run(["bash", "-c", big], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""


def test_closed_stdout_is_a_clean_error_before_the_work(store):
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m nnkcli classify {store} --k 5 >&-"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert _errors(done.stderr) == [
        "Error: standard output is closed, so the results could not be written",
        "Hint: redirect it to a file instead (> results.txt), or to /dev/null",
    ]


_SLOW_WRITE = (
    "import time\n"
    "from nnkcli.cli import main\n"
    "import nnkcli.storage.atomic as atomic\n"
    "real = atomic.fsync_file\n"
    "def slow(path):\n"
    "    print('writing', flush=True); time.sleep(30); real(path)\n"
    "atomic.fsync_file = slow\n"
)


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(store, tmp_path, signame, code):
    out = tmp_path / "i.faiss"
    out.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITE + f"main(['index', {str(store)!r}, '--out', {str(out)!r}, '-q'])"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_ctrl_c_while_the_modules_load_exits_130():
    code = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'click':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from nnkcli.cli import main\n"
    )
    done = _python(code)
    assert done.returncode == 130
    assert done.stderr == "Interrupted.\n"


def test_ctrl_c_during_interpreter_shutdown_exits_130(store):
    code = (
        "import atexit, os, signal, time\n"
        "def late():\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "atexit.register(late)\n"
        "from nnkcli.cli import main\n"
        f"main(['info', {str(store)!r}, '--format', 'json'])\n"
    )
    done = _python(code)
    assert done.returncode == 130, done.stderr
    assert "Exception ignored" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert json.loads(done.stdout)["schema_version"] == 1  # the results were complete


def test_ctrl_c_while_options_are_parsed_exits_130(store):
    code = (
        "from nnkcli import cli\n"
        "def boom(*a, **k):\n"
        "    raise KeyboardInterrupt\n"
        "cli.NnkGroup.get_command = boom\n"
        f"cli.main(['info', {str(store)!r}])\n"
    )
    done = _python(code)
    assert done.returncode == 130, done.stderr
    assert "Interrupted." in done.stderr and "Aborted" not in done.stderr


def test_history_append_on_a_real_full_disk_leaves_no_torn_line(small_disk):
    from nnkcli.tracking.history import HistoryError, append_entry, read_history

    path = small_disk / "h.jsonl"
    append_entry(path, {"sha256": "a" * 64, "source": "one"})
    before = path.read_bytes()
    _fill(small_disk)
    big = {"sha256": "b" * 64, "source": "two", "notes": "x" * 20000}  # more than one page: a short write
    with pytest.raises(HistoryError, match="no space left on device while writing history"):
        append_entry(path, big)
    assert path.read_bytes() == before
    (small_disk / "ballast").unlink()
    append_entry(path, {"sha256": "c" * 64, "source": "three"})
    assert [e["source"] for e in read_history(path).entries] == ["one", "three"]


def test_evaluate_history_in_a_read_only_folder_fails_before_the_work(read_only, store):
    done = _nnk("evaluate", store, "--history", read_only / "h.jsonl", "--k", "5")
    assert done.returncode == 1, done.stderr
    assert _errors(done.stderr)[0] == f"Error: cannot write history {read_only / 'h.jsonl'}: read-only file system"
    assert "evaluating" not in done.stderr


def test_evaluate_lock_timeout_on_a_held_history(store, tmp_path):
    history = tmp_path / "h.jsonl"
    hold = (
        "import sys, time\nfrom nnkcli.storage.atomic import file_lock\n"
        "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", hold, str(history)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        done = _nnk("evaluate", store, "--history", history, "--k", "5", "--lock-timeout", "1.5")
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 1, done.stderr
    assert f"waiting for the lock {history}.lock, held by pid {proc.pid}" in done.stderr
    assert _errors(done.stderr)[0].startswith("Error: timed out after ")
