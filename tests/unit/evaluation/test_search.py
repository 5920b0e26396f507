"""nnkcli.evaluation.search: exact re-ranking against a plain loop, and the searchers' declared capabilities."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET, ScoringOptions
from nnkcli.evaluation.search import IndexSearcher, Searcher, rerank
from nnkcli.evaluation.selection import _LeaveOneOut
from nnkcli.evaluation.setup import Evaluation
from nnkcli.evaluation.sharded_search import ShardedSearcher
from nnkcli.evaluation.streaming import evaluate_chunks


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6),
    c=st.integers(1, 30),
    d=st.integers(1, 12),
    n=st.integers(1, 40),
    missing_rate=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rerank_orders_candidates_exactly_and_carries_their_vectors(b, c, d, n, missing_rate, seed):
    rng = np.random.default_rng(seed)
    # coarse values: many exact ties, broken by row id
    vectors = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    q = rng.integers(-2, 3, size=(b, d)).astype(np.float32)
    ids = rng.integers(0, n, size=(b, c))
    ids[rng.random((b, c)) < missing_rate] = -1
    got_ids, got_sims, got_X, got_missing = rerank(q, ids.copy(), lambda safe: vectors[safe])
    for i in range(b):  # the oracle: a float64 loop and a sort on (similarity descending, id ascending)
        entries = []
        for j in ids[i]:
            if j < 0:
                entries.append((np.inf, np.iinfo(np.int64).max, -1))
            else:
                s = sum(float(vectors[j, t]) * float(q[i, t]) for t in range(d))
                entries.append((-s, int(j), int(j)))
        entries.sort()
        want_ids = [e[2] for e in entries]
        assert got_ids[i].tolist() == want_ids
        for slot, (neg, _, j) in enumerate(entries):
            if j < 0:
                assert got_missing[i, slot] and got_sims[i, slot] == -np.inf
            else:
                assert not got_missing[i, slot]
                assert got_sims[i, slot] == -neg
                np.testing.assert_array_equal(got_X[i, slot], vectors[j])


EVALUATION = Path(__file__).resolve().parents[3] / "nnkcli" / "evaluation"


class NeighborsOnly(Searcher):
    """The least a searcher can be: ``neighbors`` alone, every capability at the base's default."""

    def __init__(self, base):
        self.base, self.n, self.dim = base, base.n, base.dim
        self.calls = 0

    def neighbors(self, q, start, k, exclude_self):
        self.calls += 1
        return self.base.neighbors(q, start, k, exclude_self)


def test_capabilities_are_declared():
    assert (IndexSearcher.two_stage, IndexSearcher.thread_safe, IndexSearcher.on_device) == (True, True, False)
    assert (ShardedSearcher.two_stage, ShardedSearcher.thread_safe, ShardedSearcher.on_device) == (False, False, False)
    assert (Searcher.two_stage, Searcher.thread_safe, Searcher.on_device) == (False, False, False)
    assert Searcher.chunk_budget == IndexSearcher.chunk_budget == CHUNK_MEMORY_BUDGET
    base = Searcher()
    for call in (lambda: base.search_ids(None, 0, 1, False), lambda: base.refine(None, None)):
        with pytest.raises(NotImplementedError, match="not a two-stage searcher"):
            call()
    for call in (lambda: base.device_neighbors(None, 0, 1, False), lambda: base.labels_on_device(None)):
        with pytest.raises(NotImplementedError, match="does not search on a device"):
            call()


def test_torch_searcher_declares_its_device():
    pytest.importorskip("torch")
    from nnkcli.evaluation.torch_backend import TorchSearcher

    assert (TorchSearcher.on_device, TorchSearcher.two_stage, TorchSearcher.thread_safe) == (True, False, False)


def test_leave_one_out_takes_its_base_capabilities(arrays):
    import numpy as np

    with Evaluation.from_arrays(*arrays) as ev:
        loo = _LeaveOneOut(ev.searcher, np.arange(10))
        assert (loo.two_stage, loo.thread_safe, loo.on_device, loo.chunk_budget) == (
            True,
            True,
            False,
            CHUNK_MEMORY_BUDGET,
        )
        narrow = _LeaveOneOut(NeighborsOnly(ev.searcher), np.arange(10))
        assert (narrow.two_stage, narrow.thread_safe) == (False, False)


def test_a_searcher_with_neighbors_alone_gives_the_same_results(store):
    opts = ScoringOptions(methods="both", k_values=[3, 12], threads=2, chunk_size=16)
    with Evaluation.from_store(store) as ev:
        ref = {key: acc.result()["top1"] for key, acc in evaluate_chunks(ev, opts)[0].items()}
        ev.searcher = NeighborsOnly(ev.searcher)
        accs, timing = evaluate_chunks(ev, opts)
        # no two stages: the 60 queries are searched chunk by chunk, 16 at a time
        assert ev.searcher.calls == 4 and timing["search_block"] == timing["chunk_size"] == 16
        assert {key: acc.result()["top1"] for key, acc in accs.items()} == ref


def test_no_module_probes_a_searcher():
    probes = [
        f"{path.name}: {m.group(0)}"
        for path in sorted(EVALUATION.glob("*.py"))
        for m in re.finditer(r"(hasattr|getattr)\([^)]*searcher[^)]*\)", path.read_text())
    ]
    assert probes == []


def test_rerank_reorders_vectors_that_arrive_in_a_non_contiguous_array():
    """The reorder writes through a flat view of X: a strided X (a gather's view) is made contiguous first."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    q = rng.normal(size=(4, 5)).astype(np.float32)
    ids = rng.permutation(30)[:24].reshape(4, 6)

    def strided(safe):
        wide = np.zeros(safe.shape + (10,), dtype=np.float32)
        wide[..., ::2] = vectors[safe]
        return wide[..., ::2]  # not C-contiguous

    got_ids, got_sims, got_X, _ = rerank(q, ids.copy(), strided)
    for i in range(4):
        want = sorted(ids[i], key=lambda j: (-float(vectors[j].astype(np.float64) @ q[i].astype(np.float64)), j))
        assert got_ids[i].tolist() == [int(j) for j in want]
        np.testing.assert_array_equal(got_X[i], vectors[got_ids[i]])
