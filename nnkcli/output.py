"""Rendering results (stdout) and talking to the user (stderr).

Results go to stdout as ``table`` (rich, plain text when not a terminal), ``json``
(versioned: ``schema_version`` first) or ``csv``. Progress bars and log lines go to
stderr: rich-formatted only on a TTY, silenced by ``-q`` and by ``--format json``.
The core library logs to the ``nnkcli`` logger and reports progress through plain
callbacks, so it never imports rich or click; this module bridges both.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nnkcli.plain import jsonable

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

FORMATS = ("table", "json", "csv")
SCHEMA_VERSION = 1

logger = logging.getLogger("nnkcli")


@dataclass(frozen=True)
class Column:
    """One output column: ``key`` into each row dict, a header, a table format spec."""

    key: str
    header: str | None = None
    spec: str = ""  # format spec for the table, e.g. ".2f"; csv/json get raw values
    justify: str = "right"
    #: key of an interval ``[low, high]`` for this value: the table shows ``85.45 ±1.55``
    #: (half the interval's width), CSV adds ``<key>_ci_low`` and ``<key>_ci_high`` columns
    ci: str | None = None

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key


@dataclass
class Ui:
    """What the user asked for: verbosity (``-v`` minus ``-q``) and output format."""

    verbosity: int = 0
    fmt: str = "table"
    _stderr_console: Any = field(default=None, repr=False)

    # -- stderr ---------------------------------------------------------------
    @property
    def stderr_is_tty(self) -> bool:
        return _isatty(sys.stderr)

    @property
    def chatty(self) -> bool:
        """Whether info lines and progress bars are wanted at all."""
        return self.verbosity >= 0 and self.fmt != "json"

    def stderr_console(self):
        from rich.console import Console

        if self._stderr_console is None or self._stderr_console.file is not sys.stderr:
            self._stderr_console = Console(file=sys.stderr, highlight=False)
        return self._stderr_console

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str, unit: str = "rows") -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)``; draws a rich progress bar only on a TTY and when chatty."""
        if not (self.chatty and self.stderr_is_tty):
            yield lambda n: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        rate = _rate_column(unit)
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            rate,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.stderr_console(),
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def _rate_column(unit: str) -> ProgressColumn:
    """A column showing ``<rate> <unit>/s``; its class is built lazily so rich is imported only when a bar is drawn."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            if not speed:
                return Text(f"- {unit}/s", style="progress.data.speed")
            return Text(f"{speed:,.0f} {unit}/s", style="progress.data.speed")

    return RateColumn()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _StderrHandler(logging.Handler):
    """Log records to stderr: rich styling on a TTY, plain ``warning: ...`` lines otherwise."""

    STYLES = {"WARNING": "yellow", "ERROR": "red", "DEBUG": "dim"}

    def __init__(self, ui: Ui):
        super().__init__()
        self.ui = ui

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
            if self.ui.stderr_is_tty:
                style = self.STYLES.get(record.levelname)
                self.ui.stderr_console().print(prefix + msg, style=style, markup=False, highlight=False)
            else:
                sys.stderr.write(prefix + msg + "\n")
                sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never crash the command
            self.handleError(record)


def configure_logging(ui: Ui) -> None:
    """Route the ``nnkcli`` logger to stderr at the level the user asked for."""
    if ui.verbosity >= 1:
        level = logging.DEBUG
    elif ui.verbosity <= -2:
        level = logging.ERROR
    elif ui.verbosity == -1 or ui.fmt == "json":
        level = logging.WARNING
    else:
        level = logging.INFO
    for handler in list(logger.handlers):
        if isinstance(handler, _StderrHandler):
            logger.removeHandler(handler)
    logger.addHandler(_StderrHandler(ui))
    logger.setLevel(level)
    logger.propagate = False


# -- stdout ---------------------------------------------------------------------
def to_json(payload: dict) -> str:
    doc = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in payload.items() if k != "schema_version"}}
    return json.dumps(jsonable(doc), indent=2, allow_nan=False)


def _cell(value: Any, spec: str, interval: Any = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if spec:
        try:
            text = format(value, spec)
        except (TypeError, ValueError):
            return str(value)
        half = _half_width(interval)
        return text if half is None else f"{text} ±{format(half, spec)}"
    return str(value)


def _half_width(interval: Any) -> float | None:
    """Half the width of ``[low, high]`` (Wilson intervals are not symmetric: JSON has both ends)."""
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return None
    low, high = interval
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)):
        return None
    return (high - low) / 2.0


def csv_columns(columns: Sequence[Column]) -> list[tuple[str, Callable[[dict], Any]]]:
    """CSV headers and cell getters; a column with an interval adds ``_ci_low``/``_ci_high``."""
    out: list[tuple[str, Callable[[dict], Any]]] = []
    for c in columns:
        out.append((c.key, _value(c.key)))
        if c.ci:
            out.append((f"{c.key}_ci_low", _interval_end(c.ci, 0)))
            out.append((f"{c.key}_ci_high", _interval_end(c.ci, 1)))
    return out


def _value(key: str) -> Callable[[dict], Any]:
    return lambda row: row.get(key)


def _interval_end(key: str, i: int) -> Callable[[dict], Any]:
    return lambda row: _end(row.get(key), i)


def _end(interval: Any, i: int) -> Any:
    return interval[i] if isinstance(interval, (list, tuple)) and len(interval) == 2 else None


def render(
    payload: dict,
    *,
    fmt: str,
    columns: Sequence[Column],
    rows: Sequence[dict],
    title: str | None = None,
    caption: str | None = None,
    file=None,
) -> None:
    """Write a command's result to stdout in the requested format.

    ``payload`` is the whole JSON document (``schema_version`` is added);
    ``columns``/``rows`` are what the table and CSV formats show. A failed write
    (a full disk behind ``> file``) is an ``OutputError``; a closed pipe
    (``| head``) stays a ``BrokenPipeError``, which the CLI ends quietly.
    """
    out = file if file is not None else sys.stdout
    try:
        _render(payload, fmt, columns, rows, title, caption, out)
    except BrokenPipeError:
        raise
    except OSError as exc:
        from nnkcli.errors import OutputError
        from nnkcli.storage.atomic import output_error

        raise (
            output_error(exc, "standard output")
            or OutputError(
                f"cannot write the results to standard output: {exc.strerror or exc}",
                hint="check where standard output goes (a full disk, a closed file)",
            )
        ) from exc


def _render(payload, fmt, columns, rows, title, caption, out) -> None:
    if fmt == "json":
        out.write(to_json(payload) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        cells = csv_columns(columns)
        writer.writerow([name for name, _ in cells])
        for row in rows:
            writer.writerow(["" if jsonable(get(row)) is None else jsonable(get(row)) for _, get in cells])
    elif fmt == "table":
        from rich import box
        from rich.console import Console
        from rich.table import Table

        class _PipeConsole(Console):
            def on_broken_pipe(self) -> None:  # rich would exit 1; the CLI ends a closed pipe quietly
                raise BrokenPipeError(32, "Broken pipe")

        tty = _isatty(out)
        console = _PipeConsole(
            file=out,
            force_terminal=tty,
            no_color=not tty,
            highlight=False,
            width=None if tty else 200,
        )
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for c in columns:
            table.add_column(c.title, justify=c.justify)
        for row in rows:
            table.add_row(*(_cell(row.get(c.key), c.spec, row.get(c.ci) if c.ci else None) for c in columns))
        console.print(table)
        if caption:  # a plain line, never wrapped or centred under a narrow table
            console.print(caption, soft_wrap=True, markup=False)
    else:  # pragma: no cover - click validates the choice
        raise ValueError(f"unknown format {fmt!r}")
    out.flush()
