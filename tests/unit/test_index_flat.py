"""nnkcli.index_flat: the exact flat search is faiss's own result (same ids, same tie order), and the
zero-copy view is the index's vectors."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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


# --- the certified kernels: kernel_search returns the exact top k, whichever product found it ---


def _exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The oracle: correctly rounded similarities (math.fsum of the exact float64 products), sorted by similarity
    then id. Each pair's value is computed alone: a float64 matrix product rounds identical rows differently at
    different places of the matrix (blocked sums), which made duplicate rows order by position, not by id."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    t = np.array([[math.fsum(qi * xj) for xj in x64] for qi in q64]).reshape(len(q), len(x))
    return np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in t])


def _store(n, d, kind, rng):
    """Unit rows of one kind: random; with exact duplicates; with rows 1 ulp apart (near-ties)."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "duplicates":
        x[rng.integers(0, n, n // 2)] = x[rng.integers(0, n, n // 2)]
    elif kind == "near-ties":
        twins = rng.integers(0, n, n // 2)
        x[twins] = x[rng.integers(0, n, n // 2)]
        x[twins, rng.integers(0, d, n // 2)] = np.nextafter(x[twins, rng.integers(0, d, n // 2)], np.float32(2))
    return x


def _check_exact(found, x, q, k):
    expected = _exact_topk(x, q, k)
    for row, exp in zip(found.ids, expected, strict=True):
        assert set(row) == set(exp)
        assert row[-1] == exp[-1]  # the exact k-th last: what leave-one-out drops


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 120),
    m=st.integers(1, 12),
    d=st.sampled_from([2, 5, 16, 40]),
    kind=st.sampled_from(["random", "duplicates", "near-ties"]),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
)
def test_fp32_kernel_is_the_exact_top_k(n, m, d, kind, data, seed):
    from nnkcli.index_kernel import kernel_search

    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    x = _store(n, d, kind, rng)
    q = np.concatenate([x[rng.integers(0, n, m // 2)], _store(m - m // 2, d, "random", rng)])
    _check_exact(kernel_search(x, q, k, "fp32"), x, q, k)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 400),
    m=st.integers(1, 12),
    d=st.sampled_from([2, 7, 64, 200]),
    kind=st.sampled_from(["random", "duplicates", "near-ties"]),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
)
def test_bf16_kernel_gives_the_fp32_kernels_ids(bf16_library, n, m, d, kind, data, seed):
    """Bit-identical ids to the fp32 kernel's (and the exact top k), for any block of queries."""
    from nnkcli.index_kernel import KernelRows, kernel_search

    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    x = _store(n, d, kind, rng)
    q = np.concatenate([x[rng.integers(0, n, m // 2)], _store(m - m // 2, d, "random", rng)])
    low = kernel_search(x, q, k, "bf16", rows=KernelRows(x, "bf16"))
    np.testing.assert_array_equal(np.sort(low.ids, 1), np.sort(kernel_search(x, q, k, "fp32").ids, 1))
    _check_exact(low, x, q, k)
    split = data.draw(st.integers(0, m))  # another block of the same queries: the same ids
    parts = [kernel_search(x, q[a:b], k, "bf16", rows=KernelRows(x, "bf16")).ids for a, b in ((0, split), (split, m))]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts), 1), np.sort(low.ids, 1))


@pytest.mark.slow
def test_bf16_falls_back_where_its_bound_cannot_separate_and_not_elsewhere(bf16_library):
    """A crowd of near-identical rows wider than the candidates kept: those queries are searched in float32."""
    from nnkcli.index_kernel import BF16_EXTRA, BF16_FACTOR, KernelRows, kernel_search

    rng = np.random.default_rng(0)
    k, d = 5, 64
    crowd = BF16_FACTOR * k + BF16_EXTRA + 50
    base = rng.normal(size=d).astype(np.float32)
    near = base + 1e-4 * rng.normal(size=(crowd, d)).astype(np.float32)  # sims within bf16's error of each other
    far = rng.normal(size=(2000, d)).astype(np.float32)
    x = np.concatenate([far, near])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = np.concatenate([x[-3:], x[:20]])  # three queries in the crowd, twenty well-separated ones
    found = kernel_search(x, q, k, "bf16", rows=KernelRows(x, "bf16"))
    assert found.fallbacks == 3
    _check_exact(found, x, q, k)
    separated = kernel_search(x, q[3:], k, "bf16", rows=KernelRows(x, "bf16"))
    assert separated.fallbacks == 0


def test_fp32_widens_where_more_ties_than_candidates():
    """100 exact duplicates at the k-th place: more candidates are searched; the smallest ids win the ties."""
    from nnkcli.index_kernel import kernel_search

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[100:200] = x[7]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found = kernel_search(x, x[7:8], 3, "fp32")
    assert found.widened >= 1
    assert set(found.ids[0]) == {7, 100, 101} and found.ids[0, -1] == 101


def test_resolve_kernel_refuses_bf16_where_it_cannot_run(monkeypatch):
    from nnkcli import index_bf16
    from nnkcli.errors import InputError
    from nnkcli.index_flat import resolve_kernel

    monkeypatch.setattr(index_bf16, "cpu_flags", lambda: {"avx2"})
    index_bf16.bf16_unavailable.cache_clear()
    try:
        assert resolve_kernel("fp32") == "fp32"
        assert resolve_kernel("auto") == "fp32"
        with pytest.raises(InputError, match="no bfloat16 instructions"):
            resolve_kernel("bf16")
    finally:
        index_bf16.bf16_unavailable.cache_clear()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(300, 3000),
    k=st.integers(1, 30),
    d=st.sampled_from([3, 24, 64]),
    kind=st.sampled_from(["random", "duplicates", "near-ties", "crowd"]),
    block=st.sampled_from([64, 1000, 2**23]),
    extra=st.sampled_from([0, 8, 256]),
    stream=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_bf16_sieve_keeps_its_promise_through_blocks_truncation_and_compaction(
    bf16_library, n, k, d, kind, block, extra, stream, seed
):
    """Small blocks (the threshold rises block by block), a small capacity (queries truncate and compact their
    kept rows) and crowds of near-ties (the fallback), rows copied or rounded as they are multiplied (stream):
    still the exact top k, as the fp32 kernel's."""
    import nnkcli.index_kernel as kern

    rng = np.random.default_rng(seed)
    if kind == "crowd":
        base = rng.normal(size=d)
        x = np.concatenate([rng.normal(size=(n - n // 3, d)), base + 1e-4 * rng.normal(size=(n // 3, d))])
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    else:
        x = _store(n, d, kind, rng)
    q = np.concatenate([x[rng.integers(0, n, 3)], x[-2:], _store(3, d, "random", rng)])
    saved = kern.BF16_BLOCK_ELEMENTS, kern.BF16_EXTRA
    kern.BF16_BLOCK_ELEMENTS, kern.BF16_EXTRA = block * len(q), extra
    try:
        found = kern.kernel_search(x, q, k, "bf16", rows=kern.KernelRows(x, "bf16", stream=stream))
    finally:
        kern.BF16_BLOCK_ELEMENTS, kern.BF16_EXTRA = saved
    _check_exact(found, x, q, k)
    np.testing.assert_array_equal(np.sort(found.ids, 1), np.sort(kern.kernel_search(x, q, k, "fp32").ids, 1))


def test_floor32_is_the_largest_float32_at_or_below():
    from nnkcli.numerics.certified import floor32

    rng = np.random.default_rng(2)
    f32 = rng.normal(size=300).astype(np.float32).astype(np.float64)  # on the float32 grid: themselves
    v = np.concatenate([f32, f32 + 1e-12, f32 - 1e-12, rng.uniform(-2, 2, 500), [0.0, -0.0, 1e-300, -1e-300, -np.inf]])
    got = floor32(v)
    for value, floor in zip(v.tolist(), got.tolist(), strict=True):
        near = np.float32(value)  # the oracle: of the nearest float32 and its two neighbours, the largest <= value
        around = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
        assert floor == max(float(c) for c in around if float(c) <= value)


@pytest.mark.parametrize("library", ["mkl", "torch"])
def test_auto_weighs_the_search_size_by_library_and_loads_none(monkeypatch, library):
    from nnkcli import index_bf16
    from nnkcli.index_flat import AUTO_BF16_WORK, resolve_kernel

    def no_loading():
        raise AssertionError("auto must not load a library to decide")

    monkeypatch.setattr(index_bf16, "bf16_unavailable", no_loading)
    monkeypatch.setattr(index_bf16, "bf16_unlikely", lambda: None)
    monkeypatch.setattr(index_bf16, "likely_library", lambda: library)
    assert resolve_kernel("auto", None) == "fp32"  # the size not known yet
    assert resolve_kernel("auto", AUTO_BF16_WORK[library] - 1) == "fp32"
    assert resolve_kernel("auto", AUTO_BF16_WORK[library]) == "bf16"
    monkeypatch.setattr(index_bf16, "bf16_unlikely", lambda: "this CPU has no bfloat16 instructions")
    assert resolve_kernel("auto", 100 * AUTO_BF16_WORK[library]) == "fp32"


def test_the_library_follows_the_cpu_vendor_and_the_variable(monkeypatch):
    from nnkcli import index_bf16

    monkeypatch.delenv("NNKCLI_BF16_LIBRARY", raising=False)
    monkeypatch.setattr(index_bf16, "cpu_info", lambda: ("GenuineIntel", {"amx_bf16"}))
    assert index_bf16.library_order() == ("mkl", "torch")
    monkeypatch.setattr(index_bf16, "cpu_info", lambda: ("AuthenticAMD", {"avx512_bf16"}))
    assert index_bf16.library_order() == ("torch", "mkl")  # oneMKL's fast paths are Intel's
    monkeypatch.setattr(index_bf16, "_installed", lambda lib: lib == "mkl")
    assert index_bf16.likely_library() == "mkl"  # the other where the first is missing
    monkeypatch.setenv("NNKCLI_BF16_LIBRARY", "Torch")
    assert index_bf16.library_order() == ("torch",)
    assert index_bf16.likely_library() is None and "torch is not installed" in index_bf16.bf16_unlikely()
    monkeypatch.setenv("NNKCLI_BF16_LIBRARY", "cublas")
    with pytest.raises(ValueError, match="choose mkl or torch"):
        index_bf16.library_order()
    assert "NNKCLI_BF16_LIBRARY='cublas'" in index_bf16.bf16_unlikely()


def test_prefetch_imports_torch_only_where_torch_would_multiply(monkeypatch):
    import threading

    from nnkcli import index_bf16

    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name))
    monkeypatch.setattr(index_bf16, "bf16_unlikely", lambda: None)
    monkeypatch.delitem(__import__("sys").modules, "torch", raising=False)
    monkeypatch.setattr(index_bf16, "likely_library", lambda: "mkl")
    index_bf16.prefetch_torch()
    assert started == []
    monkeypatch.setattr(index_bf16, "likely_library", lambda: "torch")
    monkeypatch.setattr("atexit.register", lambda f: None)
    index_bf16.prefetch_torch()
    assert started == ["nnk-import-torch"]


def test_kernel_rows_fall_back_to_fp32_where_the_library_says_no(monkeypatch):
    from nnkcli import index_bf16
    from nnkcli.index_kernel import KernelRows, kernel_search

    monkeypatch.setattr(index_bf16, "bf16_unavailable", lambda: "torch's oneDNN has no bfloat16 support on this CPU")
    rng = np.random.default_rng(4)
    x = _store(200, 16, "random", rng)
    rows = KernelRows(x, "bf16")
    assert rows.kernel == "fp32" and rows.bf16 is None
    _check_exact(kernel_search(x, x[:5], 7, rows.kernel, rows=rows), x, x[:5], 7)


@pytest.mark.parametrize("shape", [(3, 5), (4096, 4096)])  # below and above the direct-mapping size
def test_fresh_array_is_zeroed_writable_and_its_mapping_freed_with_its_views(shape):
    import gc
    import mmap
    import weakref

    from nnkcli.index_bf16 import fresh_array

    a = fresh_array(shape, np.uint16)
    assert a.shape == shape and a.dtype == np.uint16 and a.flags.writeable and not a.any()
    a[-1, -1] = 7
    view = a[-1:]
    assert view[0, -1] == 7
    if a.size < 2**20:
        return  # numpy's own memory
    base = a.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "obj", None) if isinstance(base, memoryview) else base.base
    assert isinstance(base, mmap.mmap)  # its own mapping
    gone = weakref.ref(base)
    del a, base
    gc.collect()
    assert gone() is not None  # the view keeps it
    del view
    gc.collect()
    assert gone() is None
