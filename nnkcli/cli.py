"""The ``nnk`` command line: a thin click layer over the nnkcli library.

Each command parses its options, calls one core function and renders the result.
``NnkGroup.invoke`` is the one place that maps exceptions to exit codes:
``NnkError`` -> ``Error: ...`` / ``Hint: ...`` and its exit code (traceback only with
``-v``), Ctrl-C -> 130, anything unexpected -> a short message and exit 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from nnkcli import __version__
from nnkcli.errors import ExitCode, NnkError
from nnkcli.output import FORMATS, Ui, configure_logging

# command name -> "module:attribute"; imported only when used, so `nnk --help`
# does not pay for importing faiss, h5py or torch.
COMMANDS = {
    "extract": "nnkcli.commands.extract:extract",
    "info": "nnkcli.commands.info:info",
    "index": "nnkcli.commands.index:index",
    "classify": "nnkcli.commands.classify:classify",
    "sweep": "nnkcli.commands.sweep:sweep",
    "evaluate": "nnkcli.commands.evaluate:evaluate",
    "history": "nnkcli.commands.history:history",
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


def command_options(f):
    """The options every result-producing command takes: --format, -v, -q."""
    return verbosity_options(format_option(f))


def get_ui(ctx: click.Context | None = None) -> Ui:
    """The user's verbosity and format, with logging routed to stderr accordingly."""
    ctx = ctx or click.get_current_context()
    ui = Ui(verbosity=ctx.meta.get(_VERBOSITY, 0), fmt=ctx.meta.get(_FORMAT, "table"))
    configure_logging(ui)
    return ui


class NnkGroup(click.Group):
    """Lazily imported subcommands and the single exception -> exit code mapping."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except NnkError as exc:
            _report(ctx, exc, f"Error: {exc.message}", exc.hint)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(int(ExitCode.INTERRUPTED))
        except BrokenPipeError:
            # stdout closed early (`nnk ... | head`): nothing more to say
            sys.stderr.close()
            ctx.exit(int(ExitCode.DATA_ERROR))
        except Exception as exc:  # an nnkcli bug, or an environment problem we did not foresee
            _report(
                ctx, exc, f"Error: unexpected {type(exc).__name__}: {exc}",
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
    3 a quality gate failed, 130 interrupted.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="nnk")
