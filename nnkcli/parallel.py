"""How many threads nnkcli runs, and the cap on every native thread pool (the only threadpoolctl owner).

numpy's OpenBLAS, the OpenBLAS and OpenMP runtime inside faiss, and torch's OpenMP pool
each start one thread per core by default. Stacked on top of each other (or beside other
busy processes on a shared server) they oversubscribe the machine, and OpenBLAS's
spinning threads then slow small products down by an order of magnitude.
``thread_budget(n)`` caps all of them at once for the duration of a run, through
threadpoolctl, which finds the loaded BLAS and OpenMP libraries by inspecting the process.

The evaluation pipeline runs its work on ``n`` worker threads and keeps every native
library at one thread inside them, so no more than ``n`` threads are ever busy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from nnkcli.errors import InputError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a batch scheduler)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """``threads`` itself, or ``available_cores()`` when None."""
    if threads is None:
        return available_cores()
    if int(threads) < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    return int(threads)


@contextmanager
def native_threads(threads: int) -> Iterator[None]:
    """Cap every BLAS pool (process-wide) and the calling thread's OpenMP pools at ``threads``.

    OpenMP limits belong to the thread that sets them: a worker thread sets its own
    (``nnkcli.evaluation.pipeline`` keeps faiss at one thread in each). threadpoolctl
    only sees libraries already loaded, so faiss is imported first. The previous
    limits are restored on exit.
    """
    import nnkcli.index  # noqa: F401  (loads faiss, whose OpenBLAS and OpenMP runtime are capped too)

    with threadpool_limits(limits=int(threads)):
        yield


def worker_openmp_single() -> None:
    """Set every loaded OpenMP runtime to one thread for the calling thread (a worker's initializer).

    OpenMP's thread count is a per-thread setting, so the process-wide cap of
    ``native_threads`` does not reach threads started later; each worker sets its own. It imports
    nothing: a worker must not import (see ``nnkcli.evaluation.scoring``).
    """
    threadpool_limits(limits=1, user_api="openmp")  # kept for the thread's life, not restored
