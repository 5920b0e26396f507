"""How an ``nnk`` process runs and ends: stop signals, a closed pipe, its temporary files, the exit.

``nnkcli.cli`` runs each command inside :func:`run_guarded` and ends the process with
:func:`exit_process`; what happens in between (which exception means which exit code) is
``NnkGroup.invoke``'s business. Here:

- SIGTERM and SIGHUP unwind the stack like Ctrl-C (:func:`install_signal_handlers`), so every
  ``finally`` runs and temporary files are removed; the exit code is 143, 129, or 130 for Ctrl-C
  (:func:`interrupted` says so on stderr). A signal that strikes inside a finalizer (``__del__``,
  a weakref callback), where Python would print the exception and drop it, is obeyed as soon as
  the finalizer returns.
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
import weakref
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
    if _in_finalizer(frame):
        return _obey_later(signum)
    _DEFERRED.clear()
    raise Terminated(signum, signal.Signals(signum).name)


def _raise_interrupt(signum, frame):
    from nnkcli.errors import note_signal

    note_signal(signum)
    if _in_finalizer(frame):
        return _obey_later(signum)
    _DEFERRED.clear()
    raise KeyboardInterrupt


#: the code that runs as a finalizer: Python prints and drops what is raised there (``Exception
#: ignored in ...``), a stop signal's exception included (h5py frees its objects through a
#: ``WeakValueDictionary``, whose callback is in weakref.py)
_FINALIZER_FILES = {weakref.__file__}
_FINALIZER_NAMES = {"__del__", "_unraisable"}


def _in_finalizer(frame) -> bool:
    """Whether ``frame`` (where a signal's handler runs) is inside a ``__del__`` or weakref callback."""
    while frame is not None:
        code = frame.f_code
        if code.co_name in _FINALIZER_NAMES or code.co_filename in _FINALIZER_FILES:
            return True
        frame = frame.f_back
    return False


#: stop signals deferred out of a finalizer and not obeyed yet (``run_guarded`` obeys them at the end)
_DEFERRED: list[int] = []


def _obey_later(signum: int) -> None:
    """Send ``signum`` to the main thread again once it is out of every finalizer.

    A helper thread watches the main thread's frames (a millisecond apart) and sends the signal
    then: its handler raises at the main thread's next check, where nothing drops the exception.
    (Sending it again from the handler itself would run the handler again at once, inside.)
    """
    import threading
    import time

    _DEFERRED.append(signum)
    main = threading.main_thread().ident
    if main is None or not hasattr(signal, "pthread_kill"):
        return

    def watch() -> None:
        while _in_finalizer(sys._current_frames().get(main)):
            time.sleep(0.001)
        signal.pthread_kill(main, signum)

    threading.Thread(target=watch, name="nnk-stop-signal", daemon=True).start()


def _unraisable(unraisable) -> None:
    """A stop signal's exception dropped in a finalizer the frames did not reveal: obeyed after it."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        _obey_later(exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
        return
    _previous_unraisable_hook(unraisable)


_previous_unraisable_hook = sys.unraisablehook


def _exit_at_once(signum, frame):  # pragma: no cover - exercised in a subprocess test
    os._exit(130 if signum == signal.SIGINT else 128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C (so every temporary file is removed)."""
    for signum in STOP_SIGNALS.values():
        if signum is not None and (signal.getsignal(signum) in (signal.SIG_DFL, None) or _starting_up(signum)):
            signal.signal(signum, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler or _starting_up(signal.SIGINT):
        signal.signal(signal.SIGINT, _raise_interrupt)  # the same, but recorded (see interrupt_in)
    if sys.unraisablehook is not _unraisable:
        global _previous_unraisable_hook
        _previous_unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _starting_up(signum: int) -> bool:
    """Whether ``signum``'s handler is the console script's start-up one (``nnkcli.entry``)."""
    return bool(getattr(signal.getsignal(signum), "starting_up", False))


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
    if late is None and _DEFERRED:  # a stop signal struck in a finalizer as the command ended
        late = _DEFERRED[0]
    _DEFERRED.clear()
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
