"""Rendering results (stdout) and talking to the user (stderr).

Results go to stdout as ``table`` (rich, plain text when not a terminal), ``json``
(versioned: ``schema_version`` first) or ``csv``. Progress and log lines go to
stderr: rich-formatted only on a TTY (plain lines in a log), silenced by ``-q``; info lines also by
``--format json``.
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
from nnkcli.progress import ProgressLog, RateEstimator, clock_text, rate_text

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
    #: columns of one group stay in one table when a table too wide for the terminal is split
    #: (one method's, one temperature's); None: a group of its own
    group: str | None = None

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key


#: seconds between two progress lines when stderr is not a terminal (``--progress-every``)
PROGRESS_EVERY = 30.0


@dataclass
class Ui:
    """What the user asked for: verbosity (``-v`` minus ``-q``), output format, progress line interval."""

    verbosity: int = 0
    fmt: str = "table"
    progress_every: float = PROGRESS_EVERY
    _stderr_console: Any = field(default=None, repr=False)

    # -- stderr ---------------------------------------------------------------
    @property
    def stderr_is_tty(self) -> bool:
        return _isatty(sys.stderr)

    @property
    def chatty(self) -> bool:
        """Whether info lines are wanted (not with ``-q``, nor with ``--format json``)."""
        return self.verbosity >= 0 and self.fmt != "json"

    def stderr_console(self):
        from rich.console import Console

        if self._stderr_console is None or self._stderr_console.file is not sys.stderr:
            self._stderr_console = Console(file=sys.stderr, highlight=False)
        return self._stderr_console

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str, unit: str | None = None) -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)`` for one stage (``total`` None: a stage without a count, e.g. loading a file).

        On a terminal a rich bar, shown from the stage's start; otherwise (a log file, cron, Slurm, CI) a
        plain line at most every ``progress_every`` seconds and one when a stage that lasted at least
        that long ends. ``-q`` silences
        both; the output format does not (it is about stdout). The unit defaults to the stage's
        (``stage_unit``).
        """
        if self.verbosity < 0:
            yield lambda n: None
            return
        unit = unit or stage_unit(description)
        if not self.stderr_is_tty:
            log = ProgressLog(description, total, unit, every=self.progress_every)
            yield log.advance
            log.finish()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        rate = RateEstimator()
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            *_rate_columns(rate, unit),
            TimeElapsedColumn(),
            console=self.stderr_console(),
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                rate.update(done[0])
                bar.advance(task, n)

            yield advance


def stage_unit(description: str) -> str:
    """What a stage counts: train rows when an index is built or a file written, images when extracting,
    else queries (classify, sweep, compare, the selection on train)."""
    if description.startswith(("building", "indexing", "writing")):
        return "rows"
    if description.startswith("extracting"):
        return "images"
    return "queries"


def _rate_columns(rate: RateEstimator, unit: str) -> list[ProgressColumn]:
    """The bar's count, ``<rate> <unit>/s`` and ETA columns from ``rate`` (a recent rate, not rich's own);
    their classes are built lazily so rich is imported only when a bar is drawn."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        def render(self, task):
            if task.total is None:  # a stage without a count: its name and the time are what it shows
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")

    class RateColumn(ProgressColumn):
        def render(self, task):
            if task.total is None:
                return Text("")
            return Text(rate_text(rate.rate, unit), style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        max_refresh = 0.5

        def render(self, task):
            if task.total is None:
                return Text("")
            return Text(f"ETA {clock_text(rate.eta(int(task.total)))}", style="progress.remaining")

    return [CountColumn(), RateColumn(), EtaColumn()]


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
        from rich.console import Console

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
        texts = [[_cell(row.get(c.key), c.spec, row.get(c.ci) if c.ci else None) for c in columns] for row in rows]
        for i, (part, widths) in enumerate(_fitting_parts(columns, texts, console.width)):
            console.print(_table(title if i == 0 else None, [columns[j] for j in part], texts, part, widths))
        if caption:  # a plain line, never wrapped or centred under a narrow table
            console.print(caption, soft_wrap=True, markup=False)
    else:  # pragma: no cover - click validates the choice
        raise ValueError(f"unknown format {fmt!r}")
    out.flush()


def _table(title: str | None, columns: Sequence[Column], cells: list[list[str]], part: Sequence[int], widths=None):
    """A rich table of the columns ``part`` (indices into each row of ``cells``), ``widths`` wide
    (``_widths``; None: rich's layout). A cell wraps at its spaces (``85.45 ±1.55``: the interval on a
    line of its own); a word wider than its column folds, it is never cut with an ellipsis."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, c in enumerate(columns):
        width = widths[i] if widths else None
        table.add_column(c.title, justify=c.justify, overflow="fold", width=width)  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*(row[j] for j in part))
    return table


def _widths(columns: Sequence[Column], cells: list[list[str]], part: Sequence[int], width: int, strict: bool):
    """Widths of the columns ``part`` for a table ``width`` wide, or None when it cannot fit: each column
    at least its longest word (``strict`` False: text columns fold their longest words, the longest
    first, down to 8 characters; numbers stay whole), the space left shared in proportion to what each
    column's longest line wants beyond that. (Rich's own layout may shrink a column below its longest
    word and push the last one off the edge.)"""
    from rich.cells import cell_len

    lows, highs = [], []
    for j in part:
        texts = [columns[j].title, *(row[j] for row in cells)]
        lines = [line for text in texts for line in text.splitlines()] or [""]
        high = max(cell_len(line) for line in lines)
        low = max((cell_len(w) for line in lines for w in line.split()), default=1)
        lows.append(max(low, 1))
        highs.append(max(high, low, 1))
    room = width - (3 * len(part) + 1)  # padding 1 each side, a divider between, an edge each side
    text_columns = sorted((i for i, j in enumerate(part) if columns[j].justify == "left"), key=lambda i: -lows[i])
    for i in text_columns if not strict else ():  # fold the longest words first, down to 8 characters
        lows[i] -= max(0, min(sum(lows) - room, lows[i] - 8))
    if sum(lows) > room:
        return None
    if sum(highs) <= room:
        return highs
    spare, wants = room - sum(lows), [h - lo for h, lo in zip(highs, lows, strict=True)]
    widths = [lo + spare * want // sum(wants) for lo, want in zip(lows, wants, strict=True)]
    for i in sorted(range(len(widths)), key=lambda i: -wants[i])[: room - sum(widths)]:
        widths[i] += 1  # what the rounding down left
    return widths


def _fitting_parts(columns: Sequence[Column], cells: list[list[str]], width: int) -> list[tuple[list[int], Any]]:
    """The column indices of each table to print, and their widths: one table when it fits ``width`` with
    every word whole; else several, each the first column (the row's key: k, step, source) and as many
    whole groups as fit (``Column.group``; a column without one stays with the column before it); else
    one table whose text columns fold their longest words (a sha256), numbers kept whole."""
    every = list(range(len(columns)))
    widths = _widths(columns, cells, every, width, strict=True)
    if widths is not None:
        return [(every, widths)]
    groups: list[list[int]] = []
    for j in every[1:]:
        if groups and (columns[j].group is None or columns[j].group == columns[groups[-1][-1]].group):
            groups[-1].append(j)
        else:
            groups.append([j])
    parts: list[list[int]] = []
    for group in groups:
        if parts and _widths(columns, cells, parts[-1] + group, width, strict=True) is not None:
            parts[-1] += group
        else:
            parts.append([0, *group])
    laid = [_widths(columns, cells, part, width, strict=True) for part in parts]
    if len(parts) > 1 and all(w is not None for w in laid):
        return list(zip(parts, laid, strict=True))
    return [(every, _widths(columns, cells, every, width, strict=False))]
