"""Progress of a long stage, as plain text: a recent rate, its ETA, and the lines a log gets.

No third-party imports: ``nnkcli.output`` draws the terminal's bar from ``RateEstimator`` and
writes ``ProgressLog`` lines when stderr is not a terminal (a log file, cron, Slurm, CI).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable


class RateEstimator:
    """Items per second over a recent window, for an ETA that follows the present pace.

    The rate is ``(done_last - done_anchor) / (t_last - t_anchor)`` where the anchor is the latest
    sample at least ``window`` seconds before the last (or the oldest kept). The stage's start is
    dropped once two advances have been seen: the first block pays the start-up (files opened, caches
    and threads warmed), and an ETA counted from the start was far too long early in a run.
    """

    def __init__(self, window: float = 20.0, clock: Callable[[], float] | None = None):
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


def clock_text(seconds: float | None) -> str:
    """``3.2s``, ``42s``, ``4:05``, ``1:02:03`` (hours:minutes:seconds), or ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 59.5:
        return f"{seconds:.1f}s" if seconds < 9.95 else f"{seconds:.0f}s"
    s = int(round(seconds))
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def rate_text(rate: float | None, unit: str) -> str:
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
            parts.append(rate_text(overall if end else self.rate.rate, self.unit))
        if end:
            parts.append(f"done in {clock_text(now - self.rate.start)}")
        else:
            parts.append(f"ETA {clock_text(self.rate.eta(self.total, now))}")
        return f"{self.stage}: " + ", ".join(parts)

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
        self.lines += 1
