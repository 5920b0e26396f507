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
    def progress(
        self, total: int | None, description: str, unit: str | None = None
    ) -> Iterator[Callable[[int], None]]:
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


class RateEstimator:
    """Items per second over a recent window, for an ETA that follows the present pace.

    The rate is ``(done_last - done_anchor) / (t_last - t_anchor)`` where the anchor is the latest
    sample at least ``window`` seconds before the last (or the oldest kept). The stage's start is
    dropped once two advances have been seen: the first block pays the start-up (files opened, caches
    and threads warmed), and an ETA counted from the start was far too long early in a run.
    """

    def __init__(self, window: float = 20.0, clock: Callable[[], float] | None = None):
        import time

        self.window = window
        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.samples: list[tuple[float, int]] = [(self.start, 0)]
        self.advances = 0

    def update(self, done: int, now: float | None = None) -> None:
        """Record that ``done`` items are complete (a running total) at ``now``."""
        now = self.clock() if now is None else now
        self.samples.append((now, done))
        self.advances += 1
        if self.advances == 2:  # the interval from the stage's start holds the start-up: forget it
            del self.samples[0]
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            del self.samples[0]

    @property
    def done(self) -> int:
        return self.samples[-1][1]

    @property
    def rate(self) -> float | None:
        """Items per second, None before the first advance."""
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def eta(self, total: int | None, now: float | None = None) -> float | None:
        """Seconds left until ``total``: the remaining items at the recent rate, less the time since the
        last advance (the count runs down between advances); None when it cannot be known yet."""
        rate = self.rate
        if total is None or rate is None:
            return None
        now = self.clock() if now is None else now
        return max(0.0, (total - self.done) / rate - (now - self.samples[-1][0]))


def _clock_text(seconds: float | None) -> str:
    """``3.2s``, ``42s``, ``4:05``, ``1:02:03`` (hours:minutes:seconds), or ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 59.5:
        return f"{seconds:.1f}s" if seconds < 9.95 else f"{seconds:.0f}s"
    s = int(round(seconds))
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rate_text(rate: float | None, unit: str) -> str:
    if rate is None:
        return f"- {unit}/s"
    return f"{rate:,.1f} {unit}/s" if rate < 10 else f"{rate:,.0f} {unit}/s"


class ProgressLog:
    """A stage's progress as plain stderr lines: at most one every ``every`` seconds, and one at its end
    when it lasted that long.

    ``sweeping: 1,200/10,000 queries (12 %), 34 queries/s, ETA 4:18``; at the end
    ``sweeping: 10,000/10,000 queries, 35 queries/s, done in 4:50``. A stage that fails prints no end line.
    """

    def __init__(self, stage: str, total: int | None, unit: str, every: float, clock=None, stream=None):
        self.stage, self.total, self.unit, self.every = stage, total, unit, every
        self.rate = RateEstimator(clock=clock)
        self.clock = self.rate.clock
        self.stream = stream
        self.count = 0
        self.lines = 0
        self.last_line = self.rate.start

    def advance(self, n: int) -> None:
        self.count += n
        now = self.clock()
        self.rate.update(self.count, now)
        if now - self.last_line >= self.every:
            self.last_line = now
            self._write(self._line(now, end=False))

    def finish(self) -> None:
        # a stage shorter than the interval stays silent: a short run's log (and the first line of its
        # stderr, an Error: a script may look for) carries no progress at all
        now = self.clock()
        if self.lines or now - self.rate.start >= self.every:
            self._write(self._line(now, end=True))

    def _line(self, now: float, *, end: bool) -> str:
        parts = []
        if self.total is not None:
            count = f"{self.count:,}/{self.total:,} {self.unit}"
            if not end and self.total > 0:
                count += f" ({100 * self.count / self.total:.0f} %)"
            parts.append(count)
        if self.count:
            overall = self.count / (now - self.rate.start) if now > self.rate.start else None
            parts.append(_rate_text(overall if end else self.rate.rate, self.unit))
        if end:
            parts.append(f"done in {_clock_text(now - self.rate.start)}")
        else:
            parts.append(f"ETA {_clock_text(self.rate.eta(self.total, now))}")
        return f"{self.stage}: " + ", ".join(parts)

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
        self.lines += 1


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
            return Text(_rate_text(rate.rate, unit), style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        max_refresh = 0.5

        def render(self, task):
            if task.total is None:
                return Text("")
            return Text(f"ETA {_clock_text(rate.eta(int(task.total)))}", style="progress.remaining")

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
