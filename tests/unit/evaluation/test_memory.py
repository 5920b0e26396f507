"""nnkcli.evaluation.memory: the chunk and block sizes follow the searcher's declared capabilities."""

from __future__ import annotations

from nnkcli.evaluation.memory import default_chunk_size, plan_chunks, query_bytes
from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET, ScoringOptions
from nnkcli.evaluation.search import Searcher


class _Declared(Searcher):
    def __init__(self, **capabilities):
        self.n, self.dim = 10_000, 64
        for name, value in capabilities.items():
            setattr(self, name, value)


def test_the_chunk_fits_the_searchers_budget():
    opts = ScoringOptions(methods="nnk", kernel="gaussian", k_values=[50])
    wide, _ = plan_chunks(_Declared(), opts, dim=64, n_classes=10, threads=2, n_rows=100_000)
    assert wide == default_chunk_size(50, 64, 10, budget=CHUNK_MEMORY_BUDGET // 2)
    small = 64 * 2**20
    narrow, _ = plan_chunks(_Declared(chunk_budget=small), opts, dim=64, n_classes=10, threads=2, n_rows=100_000)
    assert narrow == small // 2 // query_bytes(50, 64, 10) < wide


def test_a_one_stage_searcher_searches_chunk_by_chunk_and_a_two_stage_one_in_blocks():
    opts = ScoringOptions(methods="knn", k_values=[10], chunk_size=40)
    assert plan_chunks(_Declared(), opts, dim=64, n_classes=10, threads=2, n_rows=1000) == (40, 40)
    assert plan_chunks(_Declared(), opts, dim=64, n_classes=10, threads=2, n_rows=7) == (40, 7)
    chunk, block = plan_chunks(_Declared(two_stage=True), opts, dim=64, n_classes=10, threads=2, n_rows=100_000)
    assert chunk == 40 and block > chunk
