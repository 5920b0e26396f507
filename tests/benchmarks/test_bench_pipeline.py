"""The benchmark scripts' own helpers where a bug would silently change what they measure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_busy_competitor_runs_one_busy_thread(monkeypatch):
    """Each competitor of the busy-machine check is one CPU-bound thread, as documented.

    (They used to run a second BLAS thread each: the cap was set in the environment after
    the spawned child had imported numpy.)
    """
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    import bench_pipeline

    stop = bench_pipeline.busy(1, seconds=30)  # sleeps 1 s for the child to get going
    try:
        (pid,) = stop.pids
        before = _thread_cpu_seconds(pid)
        time.sleep(2.0)
        after = _thread_cpu_seconds(pid)
    finally:
        stop()
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    assert used[0] > 0.3, used  # the competitor is running
    assert sum(used[1:]) < 0.15, f"CPU seconds per thread over 2 s: {used}"
