"""Ctrl-C obeyed at every moment: while ``nnk`` starts up, and inside a finalizer.

Start-up: the console script (``nnkcli.entry``) installs its handlers before the command line's
modules load; a child imports it, says so on stdout, then runs ``nnk`` as the console script
does, and is sent SIGINT after a seeded jitter of a few milliseconds up to the whole run: the
exit is 130 with one ``Interrupted.`` line (or 0 when the run ended first), never a traceback.
(Before the child's first line the interpreter itself is starting, which no program can
guard: the test starts counting once nnkcli's handlers are in place.)

Finalizers: Python prints and drops an exception raised inside a ``__del__`` or a weakref
callback, a signal's ``KeyboardInterrupt`` included (an ``nnk extract`` went on to exit 0 after
``Exception ignored in ... KeyboardInterrupt``). A child raises SIGINT inside one, through
``nnkcli.process.run_guarded`` as every command runs: the run stops with 130 and no traceback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

#: the console script's own steps, with a line on stdout once nnkcli.entry is imported
STARTS_LIKE_NNK = (
    "import sys\n"
    "from nnkcli.entry import main\n"
    "sys.stdout.write('handlers in place\\n'); sys.stdout.flush()\n"
    "sys.argv = ['nnk', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def test_the_console_script_starts_with_the_entry_module():
    text = (REPO / "pyproject.toml").read_text()
    section = text[text.index("[project.scripts]") :].split("\n\n")[0]
    assert section.splitlines()[1:] == ['nnk = "nnkcli.entry:main"']


def test_importing_the_entry_module_installs_the_start_up_handlers():
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"  # nohup: stays ignored
        "import nnkcli.entry\n"
        "print(all(getattr(signal.getsignal(s), 'starting_up', False) for s in (signal.SIGINT, signal.SIGTERM)),"
        " signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, 'nnkcli.cli' in sys.modules, 'click' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["True", "True", "False", "False"], res.stderr


def _interrupted_at(args, delay: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTS_LIKE_NNK, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline() == b"handlers in place\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["info", "{store}"]])
def test_ctrl_c_while_nnk_starts_up_exits_130_without_a_traceback(args, store):
    args = [a.format(store=store) for a in args]
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STARTS_LIKE_NNK, *args], env=ENV, capture_output=True, timeout=60)
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    rng = random.Random(f"start-{args}")
    codes = []
    for _ in range(12):
        delay = rng.uniform(0.0, duration * 0.6)  # the first moments weigh most: start-up
        code, err = _interrupted_at(args, delay)
        case = f"SIGINT {delay * 1000:.1f} ms after the handlers were in place: rc {code}\n{err[-2000:]}"
        assert code in (0, 130), case
        assert "Traceback" not in err and "Exception ignored" not in err, case
        if code == 130:
            assert err.splitlines()[-1] == "Interrupted.", case
        codes.append(code)
    assert 130 in codes  # some signal struck before the run ended


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time, weakref
    from nnkcli import process

    kind, steps = sys.argv[1], int(sys.argv[2])
    reached = []

    class Held:
        def __del__(self):
            if kind == "__del__":
                os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, inside the finalizer
                reached.append("the finalizer went on")

    def callback(ref):
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("the callback went on")

    def command():
        held = Held()
        if kind == "weakref callback":
            ref = weakref.ref(held, callback)
        if kind == "WeakValueDictionary":  # how h5py frees its objects
            registry = weakref.WeakValueDictionary()
            registry["id"] = held
            sys.settrace(lambda frame, event, arg: os.kill(os.getpid(), signal.SIGINT) if frame.f_code.co_name
                         == "remove" else None)
        del held
        sys.settrace(None)
        for _ in range(steps):
            time.sleep(0.01)
        print("the command ran to its end", reached, flush=True)
        return 0

    sys.exit(process.run_guarded(command))
    """
)


@pytest.mark.parametrize("kind", ["__del__", "weakref callback", "WeakValueDictionary"])
@pytest.mark.parametrize("steps", [0, 300])
def test_ctrl_c_inside_a_finalizer_is_obeyed(kind, steps):
    res = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(steps)], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 130, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    assert res.stderr.splitlines()[-1] == "Interrupted."
    if steps:  # a command that goes on is stopped soon after the finalizer, not at its end
        assert "ran to its end" not in res.stdout
