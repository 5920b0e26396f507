"""The ``nnk`` console script's entry point: a stop signal is obeyed from its first line on.

The command line's modules (click, rich, and what a command imports) take a good part of
a second to load; a Ctrl-C meanwhile was a ``KeyboardInterrupt`` traceback and exit -2.
Importing this module (the console script does it before anything else of nnkcli's)
installs handlers that end the process at once: 130 for Ctrl-C, 143 for SIGTERM, 129 for
SIGHUP, with one line on stderr (nothing is written before a command starts, so nothing
is left half-done). Once the command runs, ``nnkcli.process`` puts its own handlers in
their place, which unwind the stack so that every temporary file is removed.

A signal the parent ignores (``nohup``: SIGHUP) stays ignored. This module is the console
script's: a library that imports nnkcli keeps its own signal handling.
"""

import os
import signal

# numpy advises transparent huge pages for every large array (NUMPY_MADVISE_HUGEPAGE, on by default on Linux); where
# the kernel's THP defrag is "madvise" (a common default), a page fault in such an array may compact memory
# synchronously: on the 2-core test VM a 400 MB np.empty took 0.08 s or 2.8-4.9 s at random, 0.14 s without the
# advice, and the bf16 search ran 10-25 % slower and far less steadily. The command line turns it off before numpy
# loads; a user's own setting wins. (A library caller's numpy is left alone.)
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def _stop_at_once(signum, frame):  # pragma: no cover - exercised in subprocess tests
    os.write(2, _SAID.get(signum, b""))
    os._exit(128 + signum)


#: what the handlers of ``nnkcli.process`` replace (they leave a handler of someone else's alone)
_stop_at_once.starting_up = True  # type: ignore[attr-defined]

_SAID = {signal.SIGINT: b"Interrupted.\n"}
for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
    _signum = getattr(signal, _name, None)
    if _signum is not None and signal.getsignal(_signum) in (signal.default_int_handler, signal.SIG_DFL):
        _SAID.setdefault(_signum, f"Terminated ({_name}).\n".encode())
        signal.signal(_signum, _stop_at_once)


def main() -> None:
    """Run the ``nnk`` command line (``nnkcli.cli.main``) and exit with its code."""
    from nnkcli.cli import main as command_line

    command_line()
