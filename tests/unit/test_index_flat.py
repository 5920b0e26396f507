"""nnkcli.index_flat: the exact flat search is faiss's own result (same ids, same tie order), and the
zero-copy view is the index's vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.index_flat import flat_search, flat_view


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    d=st.integers(1, 9),
    block_rows=st.sampled_from([1, 7, 64, 10**6]),
    seed=st.integers(0, 2**31 - 1),
)
def test_flat_search_is_the_exact_top_k_on_small_integer_vectors(n, m, k, d, block_rows, seed):
    """Integer coordinates make every float32 product exact, so the oracle (a float64 sort) is exact too.

    Many ties (duplicate values) arise. The kept values must be the k largest, each id's
    value its own, and, for any number of train blocks (a short last one included), the
    result is faiss's own search's, ids in the same order: the same rows enter the same
    heaps in the same order, so even which of the rows tied at the k-th place stay is the same.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    q = rng.integers(-3, 4, size=(m, d)).astype(np.float32)
    sims, ids = flat_search(x, q, k, block_rows=block_rows)
    exact = q.astype(np.float64) @ x.astype(np.float64).T
    kk = min(k, n)
    np.testing.assert_array_equal(sims[:, :kk], -np.sort(-exact, axis=1)[:, :kk])
    np.testing.assert_array_equal(sims[:, :kk], np.take_along_axis(exact, ids[:, :kk], 1))
    assert all(len(set(r)) == kk for r in ids[:, :kk])
    assert (ids[:, kk:] == -1).all() and (sims[:, kk:] == -np.finfo(np.float32).max).all()
    index = faiss.IndexFlatIP(d)
    index.add(x)
    ref_sims, ref_ids = index.search(q, k)
    np.testing.assert_array_equal(sims, ref_sims)
    np.testing.assert_array_equal(ids, ref_ids)


def test_flat_search_of_no_queries():
    x = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    sims, ids = flat_search(x, np.zeros((0, 16), np.float32), 5)
    assert sims.shape == ids.shape == (0, 5)


def _filled(index, x):
    index.add(x)
    return index


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_flat_view_is_the_index_memory_without_a_copy(kind):
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    index = faiss.IndexFlatIP(8) if kind == "flat" else faiss.IndexHNSWFlat(8, 4, faiss.METRIC_INNER_PRODUCT)
    view = flat_view(_filled(index, x))
    np.testing.assert_array_equal(view, x)
    stored = faiss.downcast_index(index.storage) if kind == "hnsw" else index
    assert np.shares_memory(view, faiss.rev_swig_ptr(stored.get_xb(), 50 * 8))


def test_flat_view_of_an_empty_or_an_ivf_index_is_none():
    x = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32)
    assert flat_view(faiss.IndexFlatIP(8)) is None
    quantizer = faiss.IndexFlatIP(8)
    ivf = faiss.IndexIVFFlat(quantizer, 8, 2, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    assert flat_view(_filled(ivf, x)) is None
