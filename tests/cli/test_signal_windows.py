"""A stop signal at any instruction of an output write leaves nothing behind.

``test_fault_injection`` kills real processes at a few random moments; a window of a
few instructions (between a temporary file's creation and the ``try`` that removes
it) is hit there only by chance, once in many CI runs. Here each command runs, in
child interpreters that call ``nnkcli.cli.run`` again and again, while a trace
function raises ``Terminated`` (what the SIGTERM handler raises) at one bytecode
instruction of nnkcli's writing code where the interpreter would run a signal
handler, for a seeded sample of those a clean run executes. After each run: the exit
code is 143 (or 0, when the instruction was the last one), no temporary file or
folder is left, no lock is still held, and the output is either untouched or complete.
"""

from __future__ import annotations

import contextlib
import dis
import faulthandler
import fcntl
import io
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnkcli
from nnk_outputs import is_complete, sha256_of, temp_names  # tests/helpers (pythonpath)
from nnkcli import cli, errors, process
from nnkcli.errors import Terminated
from nnkcli.storage.store import write_split

pytestmark = pytest.mark.slow

PKG = Path(nnkcli.__file__).resolve().parent
#: the code that writes outputs and takes locks: where a signal is injected
TRACED = {str(p) for p in (*PKG.glob("storage/*.py"), *PKG.glob("tracking/*.py"))} | {
    str(PKG / name)
    for name in ("evaluation/predictions.py", "evaluation/partials.py", "index.py", "index_file.py", "plots.py")
}
MOMENTS = int(os.environ.get("NNKCLI_TEST_SIGNAL_MOMENTS", 120))  # sampled instructions per command
PARTS = 4  # child interpreters per command
RUN_TIMEOUT_S = 60  # one run of a tiny command takes well under a second


#: where the interpreter runs a pending signal's handler: after a call returns, at a loop's
#: back edge, as a function starts (the "eval breaker" checks); an exception raised by a trace
#: function at any other instruction is something no signal can do
_CALLS = {dis.opmap[name] for name in ("CALL", "CALL_FUNCTION_EX") if name in dis.opmap}
_CHECKS = {dis.opmap[name] for name in ("JUMP_BACKWARD", "RESUME") if name in dis.opmap}
_EXIT_CLEANUP = process.remove_own_temps


class _Injector:
    """Raise ``Terminated`` at the ``at``-th traced instruction (once); ``at=None`` only counts."""

    def __init__(self, at: int | None):
        self.at, self.count, self.fired, self.enabled = at, 0, False, True
        self.after_call: dict = {}  # frame -> whether its last instruction was a call

    def global_trace(self, frame, event, arg):
        if frame.f_code.co_filename in TRACED:
            frame.f_trace_opcodes = True
            return self.local_trace
        return None

    def local_trace(self, frame, event, arg):
        if event == "opcode" and self.enabled and not self.fired:
            op = frame.f_code.co_code[frame.f_lasti]
            after_call, self.after_call[frame] = self.after_call.get(frame, False), op in _CALLS
            if not (after_call or op in _CHECKS):
                return self.local_trace
            self.count += 1
            # not inside a __del__: Python ignores (prints) what is raised there, a real
            # signal's exception included; the next instruction outside it gets the signal
            if self.at is not None and self.count >= self.at and not _in_finalizer(frame):
                self.fired = True
                raise Terminated(signal.SIGTERM, "SIGTERM")
        return self.local_trace


def _in_finalizer(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__``."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _run_interrupted(argv, at) -> tuple[int, _Injector]:
    injector = _Injector(at)
    # the exit's own clean-up holds real signals back (tested below); the injector stops there

    def cleanup():
        injector.enabled = False
        return _EXIT_CLEANUP()

    process.remove_own_temps = cleanup
    err = io.StringIO()
    sys.settrace(injector.global_trace)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = cli.run([str(a) for a in argv])
    finally:
        sys.settrace(None)
        # frames still alive (a suspended generator) keep their trace function: disarm it
        injector.enabled = False
    injector.stderr = err.getvalue()
    return code, injector


def _held_locks(folder: Path) -> list[str]:
    held = []
    for lock in folder.glob("*.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held.append(lock.name)
        finally:
            os.close(fd)
    return held


COMMANDS = {  # name -> (argv with {root}, the output, its kind)
    "classify --out": (["classify", "{root}/f.h5", "--k", "5", "--out", "{root}/p.h5", "-q"], "p.h5", "h5"),
    "classify --shard --out": (
        ["classify", "{root}/f.h5", "--k", "5", "--shard", "1/2", "--out", "{root}/part.h5", "-q"],
        "part.h5",
        "h5",
    ),
    "index": (["index", "{root}/f.h5", "--out", "{root}/i.faiss", "-q"], "i.faiss", "faiss"),
    "extract": (
        ["extract", "{root}/e.h5", "--split", "x", "--from", "{root}/x.npy", "--overwrite", "-q"],
        "e.h5",
        "h5",
    ),
    "evaluate": (
        ["evaluate", "{root}/f.h5", "--history", "{root}/h.jsonl", "--k", "5", "--force", "-q"],
        "h.jsonl",
        "jsonl",
    ),
    "sweep --plot": (["sweep", "{root}/f.h5", "--k", "5,10", "--plot", "{root}/s.png", "-q"], "s.png", "png"),
}


def _make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    store = root / "f.h5"
    write_split(store, "train", rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300), source="t")
    write_split(store, "val", rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50), source="t")
    np.save(root / "x.npy", rng.normal(size=(40, 8)).astype(np.float32))


def _check_command(name: str, folder: Path, moments: int, part: int = 0, parts: int = 1) -> list[str]:
    """Run ``name`` interrupted at part ``part`` of ``parts`` of ``moments`` sampled instructions;
    what went wrong, if anything."""
    template, output, kind = COMMANDS[name]
    argv = [a.format(root=folder) for a in template]
    target = folder / output
    code, counting = _run_interrupted(argv, None)
    if code != 0 or temp_names(folder):
        return [f"{name}: the clean run gave {code}, left {temp_names(folder)}\n{counting.stderr[-1500:]}"]
    n = counting.count
    if n <= 100:
        return [f"{name}: only {n} traced instructions: is the traced code list out of date?"]
    failures = []
    sample = sorted(random.Random(f"signals-{name}").sample(range(1, n + 1), min(moments, n)))
    for at in sample[part::parts]:
        before = sha256_of(target)
        # a run that hangs is reported with every thread's stack, at once, not at the timeout
        faulthandler.dump_traceback_later(RUN_TIMEOUT_S, exit=True)
        code, injector = _run_interrupted(argv, at)
        faulthandler.cancel_dump_traceback_later()
        case = f"{name}: SIGTERM at instruction {at} of {n}"
        if code != (143 if injector.fired else 0):
            failures.append(f"{case}: exit {code}\n{injector.stderr[-1500:]}")
        if temp_names(folder):
            failures.append(f"{case} left {temp_names(folder)}")
            for p in folder.iterdir():
                if ".tmp-" in p.name:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        if _held_locks(folder):
            failures.append(f"{case} left the lock {_held_locks(folder)} held")
            break  # the next run would wait for it
        if not (sha256_of(target) == before or is_complete(kind, target, index_rows=300)):
            failures.append(f"{case}: {output} is damaged")
    code, last = _run_interrupted(argv, None)
    if not (code == 0 and is_complete(kind, target, index_rows=300) and temp_names(folder) == []):
        failures.append(f"{name}: the run after them gave {code}, left {temp_names(folder)}")
    return failures


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_signal_at_any_instruction_of_a_write_leaves_nothing_behind(tmp_path, name):
    # in a child interpreter: the runs leave this process's signal handlers and trace state alone
    if name == "sweep --plot":
        pytest.importorskip("matplotlib")
    _make_folder(tmp_path)
    helpers = Path(__file__).resolve().parents[1] / "helpers"  # for the child too
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PKG.parent), str(helpers), os.environ.get("PYTHONPATH", "")]),
    }
    for part in range(PARTS):  # a fresh interpreter for each part: fewer runs accumulate in one
        child = subprocess.run(
            [sys.executable, __file__, name, str(tmp_path), str(MOMENTS), str(part), str(PARTS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert child.returncode == 0, f"{child.stdout[-6000:]}\n{child.stderr[-3000:]}"
        assert child.stdout.strip().endswith(" moments, no failure"), child.stdout


def test_a_signal_while_the_exit_removes_temporary_files_is_obeyed_after(monkeypatch, capsys):
    """The removal holds stop signals back; once it is done the run exits 143 all the same."""
    from nnkcli.storage import atomic

    removed = []

    def remove_with_a_signal():
        signal.raise_signal(signal.SIGTERM)  # held back: the removal goes on
        removed.append(True)
        return []

    monkeypatch.setattr(atomic, "remove_own_temps", remove_with_a_signal)
    # cli.run installs nnkcli's handlers (nnkcli.process); this process (and what it forks later) must get its own back
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    recorded = list(errors._SIGNALS_RECEIVED)
    try:
        code = cli.run(["info", str(PKG.parent / "sample_data" / "fashion-mnist.h5"), "-q"])
        during = signal.getsignal(signal.SIGTERM)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert removed == [True]
    assert code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Terminated (SIGTERM)."
    assert during is process._raise_terminated or during is saved[signal.SIGTERM]  # its own handler is back
    # not recorded as a signal of the process: a later "one item failed" would read it as a stop
    assert errors._SIGNALS_RECEIVED == recorded


if __name__ == "__main__":
    name, where, moments, part, parts = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
    found = _check_command(name, where, moments, part, parts)
    print("\n".join(found) if found else f"{name}: part {part + 1} of {parts} of up to {moments} moments, no failure")
    sys.exit(1 if found else 0)
