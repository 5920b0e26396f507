"""The ``nnk`` command line: a thin click layer over the nnkcli library.

Each command parses its options, calls one core function and renders the result.
``NnkGroup.invoke`` (with ``main`` around it, for what happens before and after a
command) is the one place that maps exceptions to exit codes: ``NnkError`` ->
``Error: ...`` / ``Hint: ...`` and its exit code (traceback only with ``-v``), a full
disk or an unwritable folder -> a clean error naming the file, Ctrl-C -> 130,
SIGTERM -> 143 and SIGHUP -> 129 (both unwound like Ctrl-C, so temporary files are
removed), a closed pipe (``nnk info | head -1``) -> a quiet exit 0, anything
unexpected -> a short message and exit 1. How the process meets signals, a closed
pipe and its own temporary files, and how it ends, is ``nnkcli.process``'s (no click
there); ``run`` and ``main`` hand each command line to it.
"""

from __future__ import annotations

import os
import sys

try:  # a Ctrl-C while the modules load is an interrupt too, not a traceback
    import copy
    import difflib
    import importlib
    import inspect
    import traceback

    import click

    from nnkcli import __version__, process
    from nnkcli.errors import ExitCode, InputError, NnkError
    from nnkcli.output import FORMATS, PROGRESS_EVERY, Ui, configure_logging
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
    "plot": "nnkcli.commands.plot:plot",
    "quality": "nnkcli.commands.quality:quality",
    "audit": "nnkcli.commands.audit:audit",
    "fewshot": "nnkcli.commands.fewshot:fewshot",
    "probe": "nnkcli.commands.probe:probe",
    "report": "nnkcli.commands.report:report",
}

_VERBOSITY = "nnkcli.verbosity"
_FORMAT = "nnkcli.format"
_PROGRESS_EVERY = "nnkcli.progress_every"


def _count_into_meta(sign: int):
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value:
            ctx.meta[_VERBOSITY] = ctx.meta.get(_VERBOSITY, 0) + sign * value
        return value

    return callback


def _store_progress_every(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None:
        if not (value > 0 and value < float("inf")):
            raise click.BadParameter(f"must be a positive number of seconds, got {value:g}", ctx, param)
        ctx.meta[_PROGRESS_EVERY] = value
    return value


def verbosity_options(f):
    """``-v``/``-q`` (counted) and ``--progress-every``, accepted before or after the command name."""
    f = click.option(
        "--progress-every",
        type=float,
        default=None,
        metavar="SECONDS",
        expose_value=False,
        callback=_store_progress_every,
        help=f"When stderr is not a terminal (a log, cron, CI), a progress line at most this often, and one at "
        f"the end of each stage that lasted that long (-q: none).  [default: {PROGRESS_EVERY:g}]",
    )(f)
    f = click.option(
        "-q",
        "--quiet",
        count=True,
        expose_value=False,
        callback=_count_into_meta(-1),
        help="Less output on stderr (-qq: errors only).",
    )(f)
    f = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_count_into_meta(+1),
        help="More output on stderr; tracebacks for errors.",
    )(f)
    return f


def _store_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[_FORMAT] = value
    return value


def format_option(f, formats: tuple[str, ...] = FORMATS):
    """``--format table|json|csv`` (or ``formats``); the chosen format is also what ``get_ui`` reports."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats),
        default="table",
        show_default=True,
        callback=_store_format,
        is_eager=True,
        help="Output format on stdout (json is versioned).",
    )(f)


def _check_lock_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value >= 0:
        raise click.BadParameter(f"must be >= 0 seconds, got {value:g}", ctx, param)
    return value


def lock_timeout_option(f):
    """``--lock-timeout SECONDS`` for commands that take a file lock (a store, a history)."""
    return click.option(
        "--lock-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        callback=_check_lock_timeout,
        help="Give up (exit 1) when another nnk run holds the lock this long [default: wait].",
    )(f)


def command_options(f):
    """The options every result-producing command takes: --format, -v, -q."""
    return verbosity_options(format_option(f))


def get_ui(ctx: click.Context | None = None) -> Ui:
    """The user's verbosity and format, with logging routed to stderr accordingly."""
    ctx = ctx or click.get_current_context()
    ui = Ui(
        verbosity=ctx.meta.get(_VERBOSITY, 0),
        fmt=ctx.meta.get(_FORMAT, "table"),
        progress_every=ctx.meta.get(_PROGRESS_EVERY, PROGRESS_EVERY),
    )
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


class _FileOrDirectory(click.Path):
    """A ``click.Path`` whose file-or-folder check is a data error (exit 1), like a missing file.

    ``nnk sweep adir`` (a folder where a store file is meant) was a usage error (exit 2) while
    ``nnk sweep missing.h5`` is exit 1: what kind of thing a path names is the data's business.
    """

    def convert(self, value, param, ctx):
        path = os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else None
        if path is not None and not (self.allow_dash and path == "-"):
            name = _param_name(param)
            if not self.dir_okay and os.path.isdir(path):
                raise InputError(f"{name} is a directory, not a file: {path}")
            if not self.file_okay and os.path.exists(path) and not os.path.isdir(path):
                raise InputError(f"{name} is a file, not a directory: {path}")
        return super().convert(value, param, ctx)


def _param_name(param: click.Parameter | None) -> str:
    """``STORE``, ``PARTS``, ``--history``: how the command line names ``param``."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name.rstrip(".") if param is not None else "path"


def _paths_checked_as_data(command: click.Command) -> click.Command:
    """Every path parameter of ``command`` (and its subcommands) checked as ``_FileOrDirectory`` does."""
    for param in command.params:
        kind = param.type
        either = kind.file_okay and kind.dir_okay if isinstance(kind, click.Path) else True
        if isinstance(kind, click.Path) and not isinstance(kind, _FileOrDirectory) and not either:
            checked = copy.copy(kind)
            checked.__class__ = _FileOrDirectory
            param.type = checked
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
        return _paths_checked_as_data(examples_after_options(getattr(importlib.import_module(module), attr)))

    def resolve_command(self, ctx, args):
        """An unknown command name suggests the nearest one (``nnk clasify``: did you mean 'classify'?)."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS and not ctx.resilient_parsing:
            nearest = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
            if nearest:
                raise click.UsageError(f"No such command {name!r}. Did you mean {nearest[0]!r}?", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except NnkError as exc:
            _report(ctx, exc, f"Error: {exc.cli_message()}", exc.hint)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM/SIGHUP (Terminated)
            ctx.exit(process.interrupted(exc))
        except BrokenPipeError:
            ctx.exit(process.pipe_closed())
        except Exception as exc:  # an nnkcli bug, or an environment problem we did not foresee
            from nnkcli.errors import interrupt_in
            from nnkcli.storage.atomic import is_no_space, output_error

            stop = interrupt_in(exc)
            if stop is not None:  # a Ctrl-C wrapped by a C extension (h5py: SystemError)
                ctx.exit(process.interrupted(stop))

            known = None
            if isinstance(exc, OSError) and exc.filename:
                known = output_error(exc, exc.filename)
            elif is_no_space(exc):
                known = output_error(exc, "an output file")
            if known is not None:
                _report(ctx, exc, f"Error: {known.message}", known.hint)
            else:
                _report(
                    ctx,
                    exc,
                    f"Error: unexpected {type(exc).__name__}: {exc}",
                    "rerun with -v for the traceback, and please report it",
                )
            ctx.exit(int(ExitCode.DATA_ERROR))


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run one command and exit with its documented code."""
    # argv None: the process's own command line (the nnk script, python -m nnkcli)
    process.exit_process(run(argv), own_command_line=argv is None)


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (what ``main`` exits with).

    Stop signals, a closed pipe and the temporary files left are ``nnkcli.process``'s
    (``run_guarded``); what an exception in a command means is ``NnkGroup.invoke``'s.
    """
    return process.run_guarded(lambda: _invoke(argv))


def _invoke(argv: list[str] | None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="nnk", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click wraps a Ctrl-C while parsing
            return process.interrupted(exc.__cause__)
        click.echo("Aborted!", err=True)
        return int(ExitCode.DATA_ERROR)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    return int(rv) if isinstance(rv, int) else 0
