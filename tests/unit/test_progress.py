"""nnkcli.progress: the recent-rate ETA against a naive computation, and the lines a log gets."""

from __future__ import annotations

import io

import numpy as np
import pytest

from nnkcli.progress import ProgressLog, RateEstimator, clock_text


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def naive_rate(samples: list[tuple[float, int]], window: float) -> float | None:
    """The rate over the recent window, recomputed from every sample: the stage's start (the first
    sample) is left out once two advances exist; the anchor is the latest sample at least ``window``
    before the last one, else the oldest left."""
    kept = samples[1:] if len(samples) >= 3 else samples
    t_last, d_last = kept[-1]
    before = [s for s in kept[:-1] if s[0] <= t_last - window]
    t0, d0 = before[-1] if before else kept[0]
    return (d_last - d0) / (t_last - t0) if t_last > t0 and d_last > d0 else None


@pytest.mark.parametrize("seed", range(20))
def test_rate_and_eta_match_a_naive_computation(seed):
    rng = np.random.default_rng(seed)
    clock, window = Clock(), float(rng.uniform(2, 30))
    est = RateEstimator(window=window, clock=clock)
    samples, done, total = [(clock.now, 0)], 0, 5000
    for _ in range(int(rng.integers(1, 60))):
        clock.now += float(rng.exponential(2.0)) + 1e-3
        done += int(rng.integers(1, 200))
        est.update(done)
        samples.append((clock.now, done))
        assert est.rate == pytest.approx(naive_rate(samples, window), rel=1e-12)
        later = clock.now + float(rng.uniform(0, 3))
        expected = max(0.0, (total - done) / naive_rate(samples, window) - (later - clock.now))
        assert est.eta(total, now=later) == pytest.approx(expected, rel=1e-12)


def test_the_eta_follows_the_recent_pace_not_the_slow_start():
    # the first block of 1,000 queries takes 11 s (files opened, caches cold), then 1,000 every 2 s
    clock = Clock()
    est = RateEstimator(window=20.0, clock=clock)
    clock.now += 11.0
    est.update(1000)
    done = 1000
    for _ in range(3):
        clock.now += 2.0
        done += 1000
        est.update(done)
    remaining_truth = (10_000 - done) / 500.0  # 12 s at the present pace
    from_start = (10_000 - done) / (done / 17.0)  # the run's average since its start: 25.5 s
    assert est.eta(10_000) == pytest.approx(remaining_truth)
    assert from_start > 2 * remaining_truth


def test_no_rate_before_the_first_advance_nor_an_eta_without_a_total():
    clock = Clock()
    est = RateEstimator(clock=clock)
    assert est.rate is None and est.eta(100) is None
    clock.now += 1
    est.update(10)
    assert est.rate == 10.0 and est.eta(None) is None and est.eta(100) == pytest.approx(9.0)


def test_log_lines_at_most_every_interval_and_at_the_end():
    clock, out = Clock(), io.StringIO()
    log = ProgressLog("sweeping", 10_000, "queries", every=30.0, clock=clock, stream=out)
    for _ in range(10):  # 1,000 queries every 10 s
        clock.now += 10.0
        log.advance(1000)
    log.finish()
    assert out.getvalue().splitlines() == [
        "sweeping: 3,000/10,000 queries (30 %), 100 queries/s, ETA 1:10",
        "sweeping: 6,000/10,000 queries (60 %), 100 queries/s, ETA 40s",
        "sweeping: 9,000/10,000 queries (90 %), 100 queries/s, ETA 10s",
        "sweeping: 10,000/10,000 queries, 100 queries/s, done in 1:40",
    ]


def test_a_stage_shorter_than_the_interval_stays_silent_and_a_long_load_says_so():
    clock, out = Clock(), io.StringIO()
    log = ProgressLog("building the index", 500, "rows", every=30.0, clock=clock, stream=out)
    clock.now += 2.0
    log.advance(500)
    log.finish()
    assert out.getvalue() == ""
    log = ProgressLog("loading the index", None, "queries", every=30.0, clock=clock, stream=out)
    clock.now += 3725.0
    log.finish()
    assert out.getvalue() == "loading the index: done in 1:02:05\n"


def test_clock_text():
    assert [clock_text(s) for s in (None, float("nan"), 0.04, 9.94, 42.4, 59.4, 59.6, 3725)] == [
        "-",
        "-",
        "0.0s",
        "9.9s",
        "42s",
        "59s",
        "1:00",
        "1:02:05",
    ]
