"""The evaluation pipeline's schedule: search stage -> neighbor blocks -> scoring stage, on N threads.

Why two sizes. The search wants many queries at once (its matrix product runs near the
machine's peak only with thousands of query rows), while the scoring stage (neighbor
vectors, kernel blocks, solver) needs memory in proportion to the queries it holds.
So the query split is read and searched in **search blocks** of ``SEARCH_BLOCK``
queries (a few MiB: the queries and their neighbor ids), and each block is scored in
**sub-chunks** sized to the memory budget.

Why threads. Every task -- one block's search, one sub-chunk's scoring -- runs on one
of ``threads`` worker threads with every native library (BLAS, faiss's OpenMP) at one
thread, so at most ``threads`` threads are busy, on an idle or a crowded machine alike.
faiss and numpy's large operations release the GIL. ``threads`` blocks are searched
at once (at least two: the search of the next block is submitted before the scoring of
the current one, so the search of block i+1 runs beside the scoring of block i), and
the blocks are sized by :func:`balanced_block` so that the last ones end together
rather than one thread searching a short remainder while the others wait.

Why results do not depend on the thread count or the chunk size. The block size does
(``balanced_block``), but every task computes each query's numbers with operations whose
result does not depend on the other queries of its batch (the neighbors are re-ranked exactly in
float64, ties broken by row id); results are consumed strictly in query order.

Memory: at most ``threads + 1`` scoring tasks of one sub-chunk each, running, finished
or being consumed (the next is submitted as one is consumed), and at most
``max(1 + LOOKAHEAD, threads)`` blocks searched or being searched ahead of the one scored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# imported by the main thread: the workers' initializer and stages must not import (a signal in the
# main thread during an import can leave an import lock held, on which a worker would wait forever)
from nnkcli import index as nnk_index
from nnkcli.parallel import native_threads, worker_openmp_single

#: queries per search: enough rows for the search's matrix products to run near peak
SEARCH_BLOCK = 4096
#: searched blocks held ahead of the one being scored (at least; one per thread is searched at once)
LOOKAHEAD = 1
#: the smallest block balanced_block makes (far above faiss's 20-row threshold of its BLAS path)
MIN_BALANCED_BLOCK = 256


def searches_in_flight(threads: int) -> int:
    """Blocks searched at once, or searched and waiting: one per thread, and at least ``1 + LOOKAHEAD``."""
    return max(1 + LOOKAHEAD, int(threads))


def balanced_block(n: int, block: int, threads: int) -> int:
    """The search block for ``n`` queries: at most ``block`` rows, in a multiple of ``threads`` equal blocks.

    Each search runs on one thread, so ``n`` split into blocks of ``block`` rows leaves
    the last, short block on one thread while the others wait for it (10,000 queries in
    4,096-row blocks on two threads: 4,096 + 4,096 side by side, then 1,808 alone, ~15 %
    of the run's wall time idle on one core). Blocks of equal size, as many as a multiple
    of ``threads``, end together. Never below ``MIN_BALANCED_BLOCK`` rows (unless ``block``
    or ``n`` is smaller): a smaller search is less efficient than the wait it saves.
    """
    n, block, threads = max(int(n), 1), max(int(block), 1), max(int(threads), 1)
    if threads == 1 or n <= block and n < 2 * MIN_BALANCED_BLOCK:
        return min(block, n)
    blocks = -(-n // block)
    blocks = -(-blocks // threads) * threads
    size = -(-n // blocks)
    return min(block, n, max(size, MIN_BALANCED_BLOCK))


def _worker_init() -> None:
    # OpenMP limits are per thread: every runtime (faiss's, and any other loaded) at one thread here
    nnk_index.set_threads(1)
    worker_openmp_single()


def run_pipeline(
    blocks: Iterator[tuple[int, np.ndarray]],
    search: Callable[[np.ndarray, int], np.ndarray],
    score: Callable[[np.ndarray, int, np.ndarray], object],
    *,
    sub_chunk: int,
    threads: int,
) -> Iterator[tuple[object, float, float]]:
    """Yield ``(score result, search seconds, scoring seconds)`` for every sub-chunk, in query order.

    Parameters
    ----------
    blocks : iterator of (start, queries)
        Consecutive blocks of normalized query rows (read in the calling thread).
    search : callable (queries, start) -> ids
        The search stage of one block (runs in a worker); ``ids`` is sliced along its
        first axis into sub-chunks unless one sub-chunk holds the whole block.
    score : callable (queries, start, ids) -> result
        The scoring stage of one sub-chunk (runs in a worker).
    sub_chunk : int
        Queries per scoring task.
    threads : int
        Worker threads; every native pool runs at one thread inside them.

    Search seconds are reported with a block's first sub-chunk.
    """

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0

    with native_threads(1):
        pool = ThreadPoolExecutor(max_workers=threads, initializer=_worker_init)
        pending: deque = deque()

        def submit_search() -> None:
            item = next(blocks, None)
            if item is not None:
                start, q = item
                pending.append((start, q, pool.submit(timed, search, q, start)))

        try:
            for _ in range(searches_in_flight(threads)):
                submit_search()
            while pending:
                start, q, found = pending.popleft()
                ids, search_s = found.result()
                found = None
                submit_search()
                if sub_chunk >= len(q):  # the search's result goes to one task whole, whatever it is
                    tasks = iter([(q, start, ids)])
                else:
                    tasks = (
                        (q[lo : lo + sub_chunk], start + lo, ids[lo : lo + sub_chunk])
                        for lo in range(0, len(q), sub_chunk)
                    )
                # a window of scoring tasks, not the whole block: a finished task's result lives
                # until it is consumed, so submitting all of a block's sub-chunks at once held
                # every result of the block (190 MiB for a 20-k sweep of 4,096 queries, 100 classes)
                window: deque = deque()

                def submit_part(tasks=tasks, window=window) -> None:  # this block's tasks and window
                    task = next(tasks, None)
                    if task is not None:
                        window.append(pool.submit(timed, score, *task))

                for _ in range(threads + 1):
                    submit_part()
                first = True
                while window:
                    res, score_s = window.popleft().result()
                    yield res, (search_s if first else 0.0), score_s
                    res, first = None, False
                    submit_part()
        finally:
            # an error, an interrupt or a consumer that stopped early: start nothing more,
            # and wait for the running tasks (they hold views of arrays the caller owns)
            pool.shutdown(wait=True, cancel_futures=True)
