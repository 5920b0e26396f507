"""How an ``nnk`` process runs and ends: stop signals, a closed pipe, its temporary files, the exit.

``nnkcli.cli`` runs each command inside :func:`run_guarded` and ends the process with
:func:`exit_process`; what happens in between (which exception means which exit code) is
``NnkGroup.invoke``'s business. Here:

- SIGTERM and SIGHUP unwind the stack like Ctrl-C (:func:`install_signal_handlers`), so every
  ``finally`` runs and temporary files are removed; the exit code is 143, 129, or 130 for Ctrl-C
  (:func:`interrupted` says so on stderr).
- a closed pipe (``nnk info | head -1``) is a quiet exit 0 (:func:`pipe_closed`).
- the temporary files a run named and left (a signal can strike between a file's creation and
  the ``try`` that would remove it) are deleted as the command ends, stop signals held back
  meanwhile (:func:`remove_own_temps`).
- the process ends without the interpreter's shut-down, during which a Ctrl-C would kill it
  with -2 or be printed as ``Exception ignored`` (:func:`exit_process`).

No click here: this runs around the command line, not inside it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from nnkcli.errors import ExitCode, Terminated

#: the signals that stop a run like Ctrl-C does (absent on Windows: None)
STOP_SIGNALS = {"SIGTERM": getattr(signal, "SIGTERM", None), "SIGHUP": getattr(signal, "SIGHUP", None)}

#: the exit codes of a run that a signal already stopped
STOPPED_CODES = {int(ExitCode.INTERRUPTED), *(128 + s for s in STOP_SIGNALS.values() if s is not None)}


def _say(line: str) -> None:
    """One line on stderr (none when stderr is closed)."""
    if sys.stderr is not None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def interrupted(exc: BaseException | None) -> int:
    """Say how the run was stopped; the exit code (130, or 128 + the signal)."""
    if isinstance(exc, Terminated):
        _say(f"Terminated ({exc.name}).")
        return exc.exit_code
    _say("Interrupted.")
    return int(ExitCode.INTERRUPTED)


def pipe_closed() -> int:
    """stdout's reader went away (``nnk ... | head``): stop quietly with 0, like ``cat``
    under a shell that ignores SIGPIPE; the rest of stdout goes to /dev/null so that
    the interpreter's final flush cannot complain."""
    with suppress_os_errors():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return int(ExitCode.OK)


class suppress_os_errors:
    """Ignore what a closed or replaced stream raises (OSError, ValueError, AttributeError)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, (OSError, ValueError, AttributeError))


def _raise_terminated(signum, frame):
    from nnkcli.errors import note_signal

    note_signal(signum)
    raise Terminated(signum, signal.Signals(signum).name)


def _raise_interrupt(signum, frame):
    from nnkcli.errors import note_signal

    note_signal(signum)
    raise KeyboardInterrupt


def _exit_at_once(signum, frame):  # pragma: no cover - exercised in a subprocess test
    os._exit(130 if signum == signal.SIGINT else 128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C (so every temporary file is removed)."""
    for signum in STOP_SIGNALS.values():
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)  # the same, but recorded (see interrupt_in)


def _exit_on_late_signals() -> None:
    """After the command: a Ctrl-C/SIGTERM while the interpreter shuts down exits 130/143 at once
    (instead of ``Exception ignored ... KeyboardInterrupt`` and exit 0)."""
    for signum in (signal.SIGINT, *(s for s in STOP_SIGNALS.values() if s is not None)):
        signal.signal(signum, _exit_at_once)


def run_guarded(command: Callable[[], int]) -> int:
    """Run ``command`` (which returns an exit code) as the process's one command; its exit code.

    Stop signals are turned into exceptions first; a Ctrl-C, SIGTERM or SIGHUP that
    ``command`` lets through exits 130/143/129, a closed stdout pipe 0. Afterwards the
    temporary files this process named and left are removed; a stop signal meanwhile is
    obeyed once they are gone.
    """
    try:
        code = _guarded(command)
    finally:
        late = remove_own_temps()
    if late is not None and code not in STOPPED_CODES:  # a stop signal during the removal: obeyed now
        return interrupted(
            KeyboardInterrupt() if late == signal.SIGINT else Terminated(late, signal.Signals(late).name)
        )
    return code


def _guarded(command: Callable[[], int]) -> int:
    try:
        install_signal_handlers()
        if sys.stdout is None:  # started with stdout closed (`nnk ... >&-`)
            _say("Error: standard output is closed, so the results could not be written")
            _say("Hint: redirect it to a file instead (> results.txt), or to /dev/null")
            return int(ExitCode.DATA_ERROR)
        return command()
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except BrokenPipeError:
        return pipe_closed()


def remove_own_temps() -> int | None:
    """Delete the temporary files this run named and left (a signal can strike between a file's
    creation and the ``try`` that would remove it); nothing to do if no output was written.

    A stop signal meanwhile is held back until the files are gone; returns its number."""
    atomic = sys.modules.get("nnkcli.storage.atomic")
    if atomic is None:
        return None
    caught: list[int] = []
    signums = [s for s in (signal.SIGINT, *STOP_SIGNALS.values()) if s is not None]
    try:
        saved = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    except ValueError:  # not the main thread: signals are not ours to handle
        atomic.remove_own_temps()
        return None
    try:
        atomic.remove_own_temps()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    return caught[0] if caught else None


def exit_process(code: int, *, own_command_line: bool) -> NoReturn:
    """End the process with ``code`` once stdout is flushed (a closed pipe: 0; a full disk: 1).

    ``own_command_line``: this is the process's own command line (the ``nnk`` script,
    ``python -m nnkcli``), so it ends at once, without the interpreter's shut-down
    (:func:`_finish`); otherwise (called from Python) a normal ``SystemExit``.
    """
    if sys.stdout is not None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            code = pipe_closed() if code == 0 else code
        except OSError as exc:
            _say(f"Error: cannot write the results to standard output: {exc.strerror}")
            code = int(ExitCode.DATA_ERROR)
    _exit_on_late_signals()
    if own_command_line:
        _finish(code)
    sys.exit(code)


def _finish(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's own shut-down.

    Python restores the default signal handlers while it finalizes, so a Ctrl-C in
    that window killed the process (-2), or surfaced as ``Exception ignored ...
    KeyboardInterrupt`` with exit 0. Every output is complete and closed by now, so
    the exit handlers libraries registered are run here, the standard streams are
    flushed, and the process ends at once; a signal meanwhile exits 130/143/129.
    """
    import atexit
    import logging

    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress_os_errors():
                stream.flush()
        os._exit(code)
