"""Typed errors of the library and the process exit codes they map to.

The library raises these; exactly one place (``nnkcli.cli.NnkGroup.invoke``) turns
them into ``Error: <message>`` / ``Hint: <hint>`` on stderr and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``nnk`` (the table is in the docs: reference/exit-codes.md)."""

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

    def cli_message(self) -> str:
        """The message as the command line says it (an ``OptionError`` names the option there)."""
        return self.message


class InputError(NnkError):
    """Input data or parameters are invalid (wrong shape, NaN, bad value ...)."""


@dataclass(frozen=True)
class SettingName:
    """A setting's two names: the Python parameter (``k``) and the command-line option (``--k``)."""

    python: str
    option: str

    @classmethod
    def of(cls, name: str | SettingName) -> SettingName:
        """``name`` itself, or a plain name taken as both (``"--k"`` -> the option; ``"k"`` -> the parameter)."""
        return name if isinstance(name, SettingName) else cls(name, name)

    def __str__(self) -> str:
        return self.python


class OptionError(InputError, ValueError):
    """A setting's value is invalid (unknown name, k < 1, T <= 0, NaN ...): a usage error, exit 2.

    The error carries the setting's two names: its message (``str(exc)``) names the Python
    parameter (``k: k must be >= 1 (got 0)``), ``cli_message()`` the command-line option
    (``--k: ...``), and the CLI reports a value it parses as ``Invalid value for '--k': <reason>``.
    A ``ValueError`` too, so ``except ValueError`` catches a bad argument as in any library.
    A value that is only wrong for the data at hand (k larger than the train split) is an
    ``InputError`` (exit 1) instead.

    Attributes
    ----------
    name, option : str
        The Python parameter and the command-line option (the same when only one was given).
    value
        The value refused.
    reason : str
        What is wrong, naming neither (``must be >= 1``).
    """

    exit_code = ExitCode.USAGE

    def __init__(self, name: str | SettingName, value, reason: str, hint: str | None = None):
        names = SettingName.of(name)
        self.name, self.option = names.python, names.option
        self.value = value
        self.reason = reason
        super().__init__(f"{self.name}: {reason} (got {value!r})", hint=hint)

    def cli_message(self) -> str:
        return f"{self.option}: {self.reason} (got {self.value!r})"


class OptionConflict(OptionError):
    """Settings each valid alone but not together (``--shard`` without ``--out``): a usage error, exit 2.

    ``template`` names the settings by placeholders (``"{shard} needs {out}"``), filled with
    the Python parameters in the message and with the options in ``cli_message()``.
    """

    def __init__(self, template: str, names: dict[str, SettingName], hint: str | None = None, **values):
        self.template, self.names, self.values = template, dict(names), values
        first = next(iter(self.names.values()))
        InputError.__init__(self, self._render("python"), hint=hint)
        self.name, self.option, self.value, self.reason = first.python, first.option, values, self.message

    def _render(self, which: str) -> str:
        return self.template.format(**{key: getattr(n, which) for key, n in self.names.items()}, **self.values)

    def cli_message(self) -> str:
        return self._render("option")


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
