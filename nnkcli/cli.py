"""The ``nnk`` command line: a thin click layer over the nnkcli library.

Each command parses its options, calls one core function and renders the result.
``NnkGroup.invoke`` (with ``main`` around it, for what happens before and after a
command) is the one place that maps exceptions to exit codes: ``NnkError`` ->
``Error: ...`` / ``Hint: ...`` and its exit code (traceback only with ``-v``), a full
disk or an unwritable folder -> a clean error naming the file, Ctrl-C -> 130,
SIGTERM -> 143 and SIGHUP -> 129 (both unwound like Ctrl-C, so temporary files are
removed), a closed pipe (``nnk info | head -1``) -> a quiet exit 0, anything
unexpected -> a short message and exit 1.
"""

from __future__ import annotations

import os
import signal
import sys

try:  # a Ctrl-C while the modules load is an interrupt too, not a traceback
    import importlib
    import inspect
    import traceback

    import click

    from nnkcli import __version__
    from nnkcli.errors import ExitCode, NnkError, Terminated
    from nnkcli.output import FORMATS, Ui, configure_logging
except KeyboardInterrupt:  # pragma: no cover - exercised in a subprocess test
    sys.stderr.write("Interrupted.\n")
    os._exit(130)

# command name -> "module:attribute"; imported only when used, so `nnk --help`
# does not pay for importing faiss, h5py or torch.
COMMANDS = {
    "extract": "nnkcli.commands.extract:extract",
    "info": "nnkcli.commands.info:info",
    "index": "nnkcli.commands.index:index",
    "classify": "nnkcli.commands.classify:classify",
    "sweep": "nnkcli.commands.sweep:sweep",
    "merge": "nnkcli.commands.merge:merge",
    "evaluate": "nnkcli.commands.evaluate:evaluate",
    "history": "nnkcli.commands.history:history",
    "compare": "nnkcli.commands.compare:compare",
}

_VERBOSITY = "nnkcli.verbosity"
_FORMAT = "nnkcli.format"


def _count_into_meta(sign: int):
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value:
            ctx.meta[_VERBOSITY] = ctx.meta.get(_VERBOSITY, 0) + sign * value
        return value

    return callback


def verbosity_options(f):
    """``-v``/``-q`` (counted), accepted before or after the command name."""
    f = click.option(
        "-q", "--quiet", count=True, expose_value=False, callback=_count_into_meta(-1),
        help="Less output on stderr (-qq: errors only).",
    )(f)
    f = click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_count_into_meta(+1),
        help="More output on stderr; tracebacks for errors.",
    )(f)
    return f


def _store_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[_FORMAT] = value
    return value


def format_option(f):
    """``--format table|json|csv``; the chosen format is also what ``get_ui`` reports."""
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        callback=_store_format, is_eager=True, help="Output format on stdout (json is versioned).",
    )(f)


def _check_lock_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value >= 0:
        raise click.BadParameter(f"must be >= 0 seconds, got {value:g}", ctx, param)
    return value


def lock_timeout_option(f):
    """``--lock-timeout SECONDS`` for commands that take a file lock (a store, a history)."""
    return click.option(
        "--lock-timeout", type=float, default=None, metavar="SECONDS", callback=_check_lock_timeout,
        help="Give up (exit 1) when another nnk run holds the lock this long [default: wait].",
    )(f)


def command_options(f):
    """The options every result-producing command takes: --format, -v, -q."""
    return verbosity_options(format_option(f))


def get_ui(ctx: click.Context | None = None) -> Ui:
    """The user's verbosity and format, with logging routed to stderr accordingly."""
    ctx = ctx or click.get_current_context()
    ui = Ui(verbosity=ctx.meta.get(_VERBOSITY, 0), fmt=ctx.meta.get(_FORMAT, "table"))
    configure_logging(ui)
    return ui


def examples_after_options(command: click.Command) -> click.Command:
    """Every help page reads the same way: the summary, the options, then the examples.

    A command's docstring may end with an ``Examples:`` block (so the source reads well);
    it is moved into the epilog, which click prints after the options.
    """
    marker = "\b\nExamples:"
    help_text = inspect.cleandoc(command.help or "")
    at = help_text.find(marker)
    if at >= 0:
        examples = help_text[at:].rstrip()
        command.help = help_text[:at].rstrip()
        command.epilog = examples + ("\n\n" + command.epilog if command.epilog else "")
    return command


class NnkGroup(click.Group):
    """Lazily imported subcommands and the single exception -> exit code mapping."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return examples_after_options(getattr(importlib.import_module(module), attr))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except NnkError as exc:
            _report(ctx, exc, f"Error: {exc.cli_message()}", exc.hint)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM/SIGHUP (Terminated)
            ctx.exit(_interrupted(exc))
        except BrokenPipeError:
            ctx.exit(_pipe_closed())
        except Exception as exc:  # an nnkcli bug, or an environment problem we did not foresee
            from nnkcli.errors import interrupt_in
            from nnkcli.storage.atomic import is_no_space, output_error

            stop = interrupt_in(exc)
            if stop is not None:  # a Ctrl-C wrapped by a C extension (h5py: SystemError)
                ctx.exit(_interrupted(stop))

            known = None
            if isinstance(exc, OSError) and exc.filename:
                known = output_error(exc, exc.filename)
            elif is_no_space(exc):
                known = output_error(exc, "an output file")
            if known is not None:
                _report(ctx, exc, f"Error: {known.message}", known.hint)
            else:
                _report(
                    ctx, exc, f"Error: unexpected {type(exc).__name__}: {exc}",
                    "rerun with -v for the traceback, and please report it",
                )
            ctx.exit(int(ExitCode.DATA_ERROR))


def _interrupted(exc: BaseException | None) -> int:
    """Say how the run was stopped; the exit code (130, or 128 + the signal)."""
    if isinstance(exc, Terminated):
        click.echo(f"Terminated ({exc.name}).", err=True)
        return exc.exit_code
    click.echo("Interrupted.", err=True)
    return int(ExitCode.INTERRUPTED)


def _pipe_closed() -> int:
    """stdout's reader went away (``nnk ... | head``): stop quietly with 0, like ``cat``
    under a shell that ignores SIGPIPE; the rest of stdout goes to /dev/null so that
    the interpreter's final flush cannot complain."""
    with _suppress_os_errors():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return int(ExitCode.OK)


class _suppress_os_errors:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, (OSError, ValueError, AttributeError))


def _report(ctx: click.Context, exc: BaseException, line: str, hint: str | None) -> None:
    if ctx.meta.get(_VERBOSITY, 0) >= 1:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    click.echo(line, err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)


@click.group(
    cls=NnkGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'nnk COMMAND --help' for a command's options and examples.",
)
@verbosity_options
@click.version_option(__version__, "--version", prog_name="nnk", message="%(prog)s %(version)s")
def cli():
    """Evaluate frozen self-supervised features with NNK and weighted k-NN.

    \b
    Typical pipeline:
      nnk extract feats.h5 --split train --from train.npz
      nnk extract feats.h5 --split val --from val.npz
      nnk index feats.h5
      nnk sweep feats.h5 --k 10..200
      nnk classify feats.h5 --k 50 --format json --min-top1 70

    \b
    Exit codes: 0 ok, 1 data or user error, 2 usage error,
    3 a quality gate failed, 129 hung up (SIGHUP),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """


_STOP_SIGNALS = {"SIGTERM": getattr(signal, "SIGTERM", None), "SIGHUP": getattr(signal, "SIGHUP", None)}


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
    for signum in _STOP_SIGNALS.values():
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)  # the same, but recorded (see interrupt_in)


def _exit_on_late_signals() -> None:
    """After the command: a Ctrl-C/SIGTERM while the interpreter shuts down exits 130/143 at once
    (instead of ``Exception ignored ... KeyboardInterrupt`` and exit 0)."""
    for signum in (signal.SIGINT, *(s for s in _STOP_SIGNALS.values() if s is not None)):
        signal.signal(signum, _exit_at_once)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run one command and exit with its documented code."""
    code = run(argv)
    if sys.stdout is not None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            code = _pipe_closed() if code == 0 else code
        except OSError as exc:
            click.echo(f"Error: cannot write the results to standard output: {exc.strerror}", err=True)
            code = int(ExitCode.DATA_ERROR)
    _exit_on_late_signals()
    if argv is None:  # the process's own command line (the nnk script, python -m nnkcli)
        _finish(code)
    sys.exit(code)  # called from Python with arguments: a normal SystemExit


def _finish(code: int) -> None:
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
            with _suppress_os_errors():
                stream.flush()
        os._exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (what ``main`` exits with)."""
    try:
        code = _run(argv)
    finally:
        late = _remove_own_temps()
    if late is not None and code not in _STOPPED_CODES:  # a stop signal during the removal: obeyed now
        return _interrupted(KeyboardInterrupt() if late == signal.SIGINT
                            else Terminated(late, signal.Signals(late).name))
    return code


#: the exit codes of a run that a signal already stopped
_STOPPED_CODES = {int(ExitCode.INTERRUPTED), *(128 + s for s in _STOP_SIGNALS.values() if s is not None)}


def _run(argv: list[str] | None) -> int:
    try:
        install_signal_handlers()
        if sys.stdout is None:  # started with stdout closed (`nnk ... >&-`)
            click.echo("Error: standard output is closed, so the results could not be written", err=True)
            click.echo("Hint: redirect it to a file instead (> results.txt), or to /dev/null", err=True)
            return int(ExitCode.DATA_ERROR)
        try:
            rv = cli.main(args=argv, prog_name="nnk", standalone_mode=False)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # click wraps a Ctrl-C while parsing
                return _interrupted(exc.__cause__)
            click.echo("Aborted!", err=True)
            return int(ExitCode.DATA_ERROR)
        except click.ClickException as exc:
            exc.show()
            return int(exc.exit_code)
        return int(rv) if isinstance(rv, int) else 0
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return _pipe_closed()


def _remove_own_temps() -> int | None:
    """Delete the temporary files this run named and left (a signal can strike between a file's
    creation and the ``try`` that would remove it); nothing to do if no output was written.

    A stop signal meanwhile is held back until the files are gone; returns its number."""
    atomic = sys.modules.get("nnkcli.storage.atomic")
    if atomic is None:
        return None
    caught: list[int] = []
    signums = [s for s in (signal.SIGINT, *_STOP_SIGNALS.values()) if s is not None]
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
