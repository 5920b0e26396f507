"""The pipeline's schedule (search blocks, scoring sub-chunks, worker threads) and the thread caps.

What is checked: every per-query number (neighbor ids and similarities, NNK weights,
class scores) is bit-identical for every thread count, scoring chunk size and search
block size; the scores are still those of an independent brute-force oracle; every
native pool runs at one thread inside the workers; errors in a worker reach the caller
and leave no thread behind.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from nnk_data import two_splits
from nnkcli.errors import InputError
from nnkcli.evaluation import memory, pipeline, streaming
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.evaluation.setup import Evaluation
from nnkcli.evaluation.streaming import evaluate_chunks
from nnkcli.parallel import available_cores, native_threads, resolve_threads
from nnkcli.storage.store import write_split


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    xt, yt, xq, yq = two_splits(500, 131, 12, seed=5)
    path = tmp_path_factory.mktemp("pipe") / "s.h5"
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    return path, xt, yt, xq, yq


def collect(path, ks, **opts):
    """Every ChunkResult's arrays, concatenated in query order, plus the accumulated accuracies."""
    parts = []
    with Evaluation.from_store(path) as ev:
        options = ScoringOptions(methods="both", k_values=ks, **opts)
        accs, timing = evaluate_chunks(ev, options, on_chunk=parts.append)
    starts = [p.start for p in parts]
    assert starts == sorted(starts)
    out = {"ids": np.concatenate([p.ids for p in parts]), "sims": np.concatenate([p.sims for p in parts])}
    for key in parts[0].by_method_k:
        out[key, "scores"] = np.concatenate([p.by_method_k[key].scores for p in parts])
        if key[0] == "nnk":
            out[key, "theta"] = np.concatenate([p.by_method_k[key].theta for p in parts])
    return out, {key: acc.result()["top1"] for key, acc in accs.items()}, timing


@pytest.mark.parametrize("block", [16, 4096])
def test_bit_identical_for_every_thread_count_chunk_size_and_search_block(store, monkeypatch, block):
    monkeypatch.setattr(pipeline, "SEARCH_BLOCK", block)
    ks = [3, 10, 40]
    ref, ref_top1, _ = collect(store[0], ks, threads=1, chunk_size=1000)
    for threads, chunk in ((2, None), (3, 7), (2, 1), (1, 16)):
        got, top1, timing = collect(store[0], ks, threads=threads, chunk_size=chunk)
        assert timing["threads"] == threads
        assert got.keys() == ref.keys()
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key} threads={threads} chunk={chunk}")
        assert top1 == ref_top1


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
def test_both_nnk_engines_are_bit_identical_across_threads_and_chunks_and_named(store, monkeypatch, engine):
    from nnkcli.numerics import compiled

    monkeypatch.setenv("NNKCLI_COMPILED", "1" if engine == "compiled" else "0")
    if engine == "compiled" and not compiled.available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    ks = [5, 20, 60]
    ref, ref_top1, timing = collect(store[0], ks, threads=1, chunk_size=1000)
    assert timing["nnk_engine"] == engine
    for threads, chunk in ((2, 3), (3, 17)):
        got, top1, _ = collect(store[0], ks, threads=threads, chunk_size=chunk)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key} threads={threads} chunk={chunk}")
        assert top1 == ref_top1


def test_the_two_nnk_engines_agree(store, monkeypatch):
    from nnkcli.numerics import compiled

    if not compiled.available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    fast, fast_top1, _ = collect(store[0], [10, 50], threads=2)
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    slow, slow_top1, _ = collect(store[0], [10, 50], threads=2)
    assert fast_top1 == slow_top1
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], rtol=0, atol=1e-10, err_msg=str(key))


def test_blocks_and_threads_still_match_brute_force(store, monkeypatch):
    path, xt, yt, xq, yq = store
    monkeypatch.setattr(pipeline, "SEARCH_BLOCK", 32)
    got, _, timing = collect(path, [10], threads=2, chunk_size=5)
    assert timing["search_block"] == 32 and timing["chunk_size"] == 5
    Xt = xt / np.linalg.norm(xt, axis=1, keepdims=True).astype(np.float64)
    Xq = xq / np.linalg.norm(xq, axis=1, keepdims=True).astype(np.float64)
    S = Xq @ Xt.T
    for i in range(len(xq)):
        order = np.lexsort((np.arange(S.shape[1]), -S[i]))[:10]
        np.testing.assert_array_equal(got["ids"][i], order)
        np.testing.assert_allclose(got["sims"][i], S[i, order], atol=1e-6)
    theta = got[("nnk", 10), "theta"]
    # every weight vector certified against a from-scratch G of the vectors the problem is
    # defined on: the float32 unit rows the index stores
    from nnkcli.index import normalize_rows

    xt32, xq32 = normalize_rows(xt).astype(np.float64), normalize_rows(xq).astype(np.float64)
    for i in range(0, len(xq), 13):
        Xn, qn = xt32[got["ids"][i]], xq32[i]
        G, g = (1 + Xn @ Xn.T) / 2, (1 + Xn @ qn) / 2
        lam = G @ theta[i] - g
        assert theta[i].min() >= 0 and lam.min() > -1e-8 and np.abs(lam[theta[i] > 0]).max() < 1e-8


def test_native_pools_run_single_threaded_inside_workers(store, monkeypatch):
    from threadpoolctl import threadpool_info

    seen = []
    real = streaming.score_chunk

    def spy(*args, **kwargs):
        seen.append(
            (
                threading.current_thread() is not threading.main_thread(),
                [
                    (lib["filepath"], lib["num_threads"])
                    for lib in threadpool_info()
                    if lib["user_api"] in ("blas", "openmp")
                ],
            )
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "score_chunk", spy)
    monkeypatch.setattr(pipeline, "SEARCH_BLOCK", 40)
    collect(store[0], [5], threads=2, chunk_size=20)
    assert seen and all(in_worker for in_worker, _ in seen)
    for _, pools in seen:  # every BLAS and OpenMP library loaded (faiss's, numpy's, torch's, ...)
        assert pools and all(n == 1 for _, n in pools), pools


def test_a_failing_task_reaches_the_caller_and_leaves_no_thread(store, monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(streaming, "score_chunk", boom)
    monkeypatch.setattr(pipeline, "SEARCH_BLOCK", 16)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="scoring failed"):
        collect(store[0], [5], threads=2, chunk_size=4)
    assert threading.active_count() == before
    assert len(calls) < 131 // 4  # queued tasks were cancelled, not all run


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_pipeline_yields_in_order_and_searches_ahead_of_scoring(threads):
    events = []
    lock = threading.Lock()

    def search(q, start):
        with lock:
            events.append(("search", start))
        return np.arange(start, start + len(q))

    def score(q, start, ids):
        with lock:
            events.append(("score", start))
        return start, ids

    blocks = iter([(s, np.zeros((10, 2))) for s in range(0, 50, 10)])
    out = [res for res, _, _ in pipeline.run_pipeline(blocks, search, score, sub_chunk=4, threads=threads)]
    assert [s for s, _ in out] == [0, 4, 8, 10, 14, 18, 20, 24, 28, 30, 34, 38, 40, 44, 48]
    np.testing.assert_array_equal(np.concatenate([ids for _, ids in out]), np.arange(50))
    if threads == 1:  # one worker runs the queue in order: the next blocks' searches come first
        assert events == [
            ("search", 0),
            ("search", 10),
            ("search", 20),
            ("score", 0),
            ("score", 4),
            ("score", 8),
            ("search", 30),
            ("score", 10),
            ("score", 14),
            ("score", 18),
            ("search", 40),
            ("score", 20),
            ("score", 24),
            ("score", 28),
            ("score", 30),
            ("score", 34),
            ("score", 38),
            ("score", 40),
            ("score", 44),
            ("score", 48),
        ]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pipeline_holds_a_window_of_scoring_results_not_a_whole_block(threads):
    """At most threads + 1 sub-chunks of a block are scored ahead of the consumer.

    (All of a block's sub-chunks used to be submitted at once, and every finished result
    was held until the block's last was consumed: a 20-k sweep held ~190 MiB of them.)
    """
    lock = threading.Lock()
    scored, consumed, ahead = [0], [0], []

    def search(q, start):
        return np.arange(start, start + len(q))

    def score(q, start, ids):
        with lock:
            scored[0] += 1
            ahead.append(scored[0] - consumed[0])
        return start

    blocks = iter([(s, np.zeros((64, 2))) for s in range(0, 192, 64)])
    out = []
    for res, _, _ in pipeline.run_pipeline(blocks, search, score, sub_chunk=2, threads=threads):
        out.append(res)
        time.sleep(0.002)  # a slow consumer: the workers would race ahead
        with lock:
            consumed[0] += 1
    assert out == list(range(0, 192, 2))
    assert max(ahead) <= threads + 1, max(ahead)


def test_threads_default_to_the_cores_this_process_may_use():
    import os

    assert available_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads(None) == available_cores()
    assert resolve_threads(3) == 3
    with pytest.raises(InputError, match="--threads must be >= 1"):
        resolve_threads(0)


def test_native_threads_caps_blas_and_restores_it():
    from threadpoolctl import threadpool_info

    def blas():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas()
    with native_threads(1):
        assert set(blas()) == {1}
    assert blas() == before


def test_result_rows_are_the_same_whatever_the_threads_that_compute_them(store):
    from nnkcli.evaluation.sweeps import sweep

    docs = [sweep(store[0], k_values="3..30:3", threads=t).document for t in (1, 3)]
    assert docs[0]["timing"]["threads"] == 1 and docs[1]["timing"]["threads"] == 3
    assert len(docs[0]["results"]) == 20
    assert docs[0]["results"] == docs[1]["results"]


def test_the_compiled_engines_runtime_is_counted_in_the_chunk_budget(store, monkeypatch):
    from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
    from nnkcli.numerics import compiled

    if not compiled.available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    dim, n_classes = 12, 4
    _, _, timing = collect(store[0], [3, 10, 40], threads=2)
    budget = (CHUNK_MEMORY_BUDGET - compiled.RUNTIME_BYTES) // 2
    assert timing["chunk_size"] == memory.default_chunk_size(40, dim, n_classes, budget=budget)
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    _, _, timing = collect(store[0], [3, 10, 40], threads=2)
    assert timing["chunk_size"] == memory.default_chunk_size(40, dim, n_classes, budget=CHUNK_MEMORY_BUDGET // 2)


def _chunk(path, **opts):
    with Evaluation.from_store(path) as ev:
        return evaluate_chunks(ev, ScoringOptions(k_values=[3, 10, 40], threads=2, **opts))[1]["chunk_size"]


def test_query_by_query_scoring_runs_in_small_chunks_and_the_batched_engine_keeps_the_budgets(store, monkeypatch):
    """k-NN and the compiled NNK engine cost the same per query whatever the chunk: ~8 MiB of neighbors.

    The batched numpy engine pays its per-step cost once per chunk, so it keeps the budget's
    (larger) chunk; so do the Gaussian kernel and an explicit --chunk-size.
    """
    from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
    from nnkcli.numerics import compiled

    dim, n_classes, k = 12, 4, 40
    assert memory.query_by_query_chunk(200, 784) == 16  # 8 MiB / 627 KB: 13, raised to the floor
    assert memory.query_by_query_chunk(50, 384) == 8 * 2**20 // (4 * 50 * 384) == 109
    assert memory.query_by_query_chunk(200, 784, n_k=2) == 32  # 16 queries per k value
    assert memory.query_by_query_chunk(200, 784, n_k=20) == 20 * 2**20 // (4 * 200 * 784) == 33  # ... to 20 MiB
    assert memory.query_by_query_chunk(200, 384, n_k=20) == 64  # ... up to 64 (19 MiB)
    assert memory.query_by_query_chunk(20, 128, n_k=20) == 8 * 2**20 // (4 * 20 * 128)
    monkeypatch.setattr(memory, "QUERY_BY_QUERY_CHUNK_BYTES", 4 * k * dim * 50)  # 50 queries here
    budget_chunk = memory.default_chunk_size(k, dim, n_classes, budget=CHUNK_MEMORY_BUDGET // 2)
    assert budget_chunk > 1000
    assert _chunk(store[0], methods="knn") == 50
    assert _chunk(store[0], methods="knn", chunk_size=7) == 7
    assert _chunk(store[0], methods="both", kernel="gaussian") == budget_chunk
    monkeypatch.setenv("NNKCLI_COMPILED", "0")
    assert _chunk(store[0], methods="both") == budget_chunk
    assert _chunk(store[0], methods="knn") == 50
    monkeypatch.delenv("NNKCLI_COMPILED")
    if compiled.available():
        assert _chunk(store[0], methods="both") == 50


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_pipeline_searches_one_block_per_thread_at_once(threads):
    """Every worker can search: ``threads`` searches run side by side, not two (the old lookahead)."""
    lock = threading.Lock()
    running, most = [0], [0]
    arrived = threading.Barrier(threads, timeout=5)

    def search(q, start):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if start < 10 * threads:  # the first wave: wait until every worker is searching (or time out)
            try:
                arrived.wait()
            except threading.BrokenBarrierError:
                pass
        with lock:
            running[0] -= 1
        return np.arange(start, start + len(q))

    def score(q, start, ids):
        return ids

    blocks = iter([(s, np.zeros((10, 2))) for s in range(0, 10 * 3 * threads, 10)])
    out = [ids for ids, _, _ in pipeline.run_pipeline(blocks, search, score, sub_chunk=5, threads=threads)]
    np.testing.assert_array_equal(np.concatenate(out), np.arange(30 * threads))
    assert most[0] == threads


@pytest.mark.parametrize(
    "n, block, threads, expected",
    [
        (10_000, 4096, 2, 2500),  # 4,096 + 4,096 + 1,808 left one core idle for the last block
        (10_000, 4096, 1, 4096),  # one thread: nothing to balance
        (10_000, 4096, 4, 2500),
        (50_000, 4096, 2, 3572),  # 14 blocks, 7 per thread
        (8_192, 4096, 2, 4096),  # already balanced
        (1_000, 4096, 2, 500),  # one block would leave a thread idle
        (300, 4096, 2, 300),  # too small to be worth splitting
        (600, 4096, 4, 256),  # never below MIN_BALANCED_BLOCK
        (131, 32, 2, 32),  # a smaller block than the floor is kept
    ],
)
def test_balanced_block(n, block, threads, expected):
    got = pipeline.balanced_block(n, block, threads)
    assert got == expected
    assert got <= block
    blocks = -(-n // got)
    if pipeline.MIN_BALANCED_BLOCK < got < min(block, n):
        assert blocks % threads == 0 and blocks * got - n < blocks  # equal blocks, as many as a multiple


def test_evaluate_chunks_searches_balanced_blocks(store, monkeypatch):
    """The pipeline's blocks are balanced for the thread count (131 queries, SEARCH_BLOCK 100, floor 16).

    (One thread searched 100 + 31, the other waiting, and so did two threads.)
    """
    monkeypatch.setattr(pipeline, "SEARCH_BLOCK", 100)
    monkeypatch.setattr(pipeline, "MIN_BALANCED_BLOCK", 16)
    sizes = []
    real = pipeline.run_pipeline

    def spy(blocks, *args, **kwargs):
        def seen():
            for start, q in blocks:
                sizes.append(len(q))
                yield start, q

        return real(seen(), *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_pipeline", spy)
    ref, _, _ = collect(store[0], [5], threads=1, chunk_size=10)
    assert sizes == [100, 31]
    sizes.clear()
    for threads, expected in ((2, [66, 65]), (3, [44, 44, 43])):
        sizes.clear()
        got, _, timing = collect(store[0], [5], threads=threads, chunk_size=7)
        assert sizes == expected and timing["search_block"] == expected[0]
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key} threads={threads}")
