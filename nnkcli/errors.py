"""Typed errors of the library and the process exit codes they map to.

The library raises these; exactly one place (``nnkcli.cli.NnkGroup.invoke``) turns
them into ``Error: <message>`` / ``Hint: <hint>`` on stderr and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``nnk`` (documented in the README)."""

    OK = 0
    #: bad data or user error: a missing file, NaN features, a stale index ...
    DATA_ERROR = 1
    #: the command line itself is wrong (click's usage errors)
    USAGE = 2
    #: a quality gate (``--min-top1``, ``--fail-on-regression``) failed
    GATE_FAILED = 3
    #: the terminal went away (SIGHUP): 128 + 1, cleaned up like Ctrl-C
    HANGUP = 129
    #: interrupted by Ctrl-C / SIGINT
    INTERRUPTED = 130
    #: terminated by SIGTERM (cron, ``timeout``, systemd): 128 + 15, cleaned up like Ctrl-C
    TERMINATED = 143


class NnkError(Exception):
    """An error the user can act on: one line of message, one line of hint."""

    exit_code: ExitCode = ExitCode.DATA_ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(NnkError):
    """Input data or parameters are invalid (wrong shape, NaN, bad value ...)."""


class OptionError(InputError):
    """An option value is invalid by itself (unknown name, k < 1, T <= 0, NaN ...): a usage error.

    ``option`` is the command-line name (``--temperature``); the CLI reports the same
    rule through click as ``Invalid value for '--temperature'`` (exit 2). A value that
    is only wrong for the data at hand (k larger than the train split) is an
    ``InputError`` (exit 1) instead.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, option: str, value, message: str, hint: str | None = None):
        super().__init__(f"{option}: {message} (got {value!r})", hint=hint)
        self.option = option
        self.value = value
        self.reason = message


class StoreError(NnkError):
    """A feature store is missing, unreadable, malformed, or refuses a write."""


class IndexFileError(NnkError):
    """A saved index is missing, corrupt, or does not fit the store."""


class OutputError(NnkError):
    """An output cannot be written: a full disk, a read-only folder, a missing permission."""


class LockTimeout(NnkError):
    """Another process held a lock for longer than ``--lock-timeout``."""


class StaleIndexError(IndexFileError):
    """A saved index was built from different data than the store now holds."""


class MissingDependencyError(NnkError):
    """An optional extra (torch, matplotlib) is needed but not installed."""

    def __init__(self, what: str, extra: str):
        super().__init__(
            f"{what} needs the optional '{extra}' extra, which is not installed",
            hint=f'pip install "nnkcli[{extra}]"',
        )
        self.extra = extra


class GateFailed(NnkError):
    """A quality gate failed; results were still written."""

    exit_code = ExitCode.GATE_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwound like Ctrl-C (temporary files removed), exit 128 + signal.

    A subclass of KeyboardInterrupt so that every ``except Exception`` lets it through
    and every cleanup that handles Ctrl-C handles it too.
    """

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum


#: stop signals received by this process (recorded by the CLI's signal handlers)
_SIGNALS_RECEIVED: list[int] = []


def note_signal(signum: int) -> None:
    """Record that a stop signal arrived (the CLI's handlers call this before raising)."""
    _SIGNALS_RECEIVED.append(int(signum))


def interrupt_in(exc: BaseException) -> BaseException | None:
    """The interrupt behind ``exc``, if any: a handler of "one item failed" must re-raise it.

    C extensions can wrap a Ctrl-C into another exception (h5py once surfaced one as
    ``SystemError ... FastRLock.__exit__``), so the cause/context chain is searched for
    a KeyboardInterrupt (Terminated included); failing that, a stop signal recorded by
    ``note_signal`` means the run is being interrupted whatever the exception says.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    if _SIGNALS_RECEIVED:
        import signal

        signum = _SIGNALS_RECEIVED[-1]
        if signum == signal.SIGINT:
            return KeyboardInterrupt()
        return Terminated(signum, signal.Signals(signum).name)
    return None
