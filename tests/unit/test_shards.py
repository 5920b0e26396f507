"""Sharded train indexes (nnkcli.shards, evaluation.sharded_search) against brute force and one index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnk_data import two_splits
from nnkcli import shards
from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.evaluation.classification import classify
from nnkcli.evaluation.search import merge_topk, rank_order
from nnkcli.evaluation.sweeps import sweep
from nnkcli.index import IndexParams, index_store
from nnkcli.storage.store import write_split


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "s.h5"
    xt, yt, xq, yq = two_splits(203, 37, 12, seed=3)
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    return path, xt, xq


def _brute(xt, xq, k, exclude_self=False):
    """Float64 cosine, ties by row id: the exact neighbor order."""
    a = xt / np.linalg.norm(xt.astype(np.float64), axis=1, keepdims=True)
    b = xq / np.linalg.norm(xq.astype(np.float64), axis=1, keepdims=True)
    s = b @ a.T
    out = []
    for i, row in enumerate(s):
        order = np.lexsort((np.arange(len(row)), -row))
        if exclude_self:
            order = order[order != i]
        out.append(order[:k])
    return np.array(out)


def _neighbors(doc_path):
    import h5py

    with h5py.File(doc_path, "r") as f:
        return f["neighbors"][()], f["knn/top5"][()], f["nnk/top5"][()]


@pytest.mark.parametrize("n_shards", [1, 2, 5, 120])  # uneven sizes; M > n/2 (shards of 1 and 2 rows)
def test_sharded_equals_unsharded_and_brute_force(store, tmp_path, n_shards):
    path, xt, xq = store
    single = tmp_path / "single.faiss"
    index_store(path, out=single)
    manifest = tmp_path / "sharded.faiss"
    summary = shards.index_store_sharded(path, out=manifest, n_shards=n_shards)
    assert summary["shards"] == n_shards and sum(summary["shard_rows"]) == 203
    assert max(summary["shard_rows"]) - min(summary["shard_rows"]) <= 1
    a = classify(path, k=9, index_path=single, predictions_path=tmp_path / "a.h5", chunk_size=20)
    b = classify(path, k=9, index_path=manifest, predictions_path=tmp_path / "b.h5", chunk_size=20)
    assert a["results"] == b["results"]
    assert b["index"]["shards"] == n_shards
    na, ka, ta = _neighbors(tmp_path / "a.h5")
    nb, kb, tb = _neighbors(tmp_path / "b.h5")
    np.testing.assert_array_equal(nb, _brute(xt, xq, 9))
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(ta, tb)


@pytest.mark.parametrize("n_shards", [3, 120])
def test_sharded_sweep_and_leave_one_out(store, tmp_path, n_shards):
    path, xt, _ = store
    single, manifest = tmp_path / "single.faiss", tmp_path / "sharded.faiss"
    index_store(path, out=single)
    shards.index_store_sharded(path, out=manifest, n_shards=n_shards)
    kw = dict(k_values=[1, 4, 10], query_split="train", exclude_self=True, chunk_size=128)
    a = sweep(path, index_path=single, **kw).document
    b = sweep(path, index_path=manifest, **kw).document
    assert a["results"] == b["results"] and a["best"] == b["best"]
    classify(
        path, k=5, index_path=manifest, query_split="train", exclude_self=True, predictions_path=tmp_path / "loo.h5"
    )
    np.testing.assert_array_equal(_neighbors(tmp_path / "loo.h5")[0], _brute(xt, xt, 5, exclude_self=True))


def test_default_path_finds_the_manifest_and_rebuild_replaces_old_shards(tmp_path):
    xt, yt, xq, yq = two_splits(50, 8, 6, seed=1)
    path = tmp_path / "f.h5"
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    shards.index_store_sharded(path, n_shards=3)
    first = sorted(p.name for p in tmp_path.glob("f.train.*.shard-*"))
    assert len(first) == 3 and shards.is_manifest(tmp_path / "f.train.faiss")
    doc = classify(path, k=3)
    assert doc["index"]["shards"] == 3 and not doc["index"]["built_in_memory"]
    shards.index_store_sharded(path, n_shards=2)
    second = sorted(p.name for p in tmp_path.glob("f.train.*.shard-*"))
    assert len(second) == 2 and not set(first) & set(second)


def test_stale_or_missing_shard_names_it(tmp_path):
    xt, yt, xq, yq = two_splits(60, 8, 6, seed=2)
    path = tmp_path / "f.h5"
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    shards.index_store_sharded(path, n_shards=3)
    m = shards.Manifest(tmp_path / "f.train.faiss")
    # a shard file of another build (other rows) put in place of shard 2
    other = tmp_path / "other.faiss"
    shards.index_store_sharded(path, out=other, n_shards=2)
    shards.Manifest(other).file(1).replace(m.file(1))
    with pytest.raises(StaleIndexError, match=r"shard 2 of 3 .*rows 20:40.* is stale"):
        classify(path, k=3)
    m.file(1).unlink()
    with pytest.raises(IndexFileError, match=r"shard 2 of 3 .* is missing"):
        classify(path, k=3)
    # --rebuild-index rebuilds the same number of shards
    doc = classify(path, k=3, rebuild_index=True)
    assert doc["index"]["rebuilt"] and doc["index"]["shards"] == 3
    # the split changed: the manifest is stale and says so
    write_split(path, "train", xt[:-1], yt[:-1], source="test", overwrite=True)
    with pytest.raises(StaleIndexError, match="sharded index .* is stale"):
        classify(path, k=3)


def test_failed_build_keeps_the_old_manifest(tmp_path, monkeypatch):
    xt, yt, _, _ = two_splits(40, 4, 5, seed=4)
    path = tmp_path / "f.h5"
    write_split(path, "train", xt, yt, source="test")
    shards.index_store_sharded(path, n_shards=2)
    before = (tmp_path / "f.train.faiss").read_bytes()
    files = sorted(tmp_path.glob("f.train.*.shard-*"))
    import nnkcli.index as nnk_index

    real, calls = nnk_index.save_index, []

    def fail_on_third(built, p):
        calls.append(p)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(built, p)

    monkeypatch.setattr(nnk_index, "save_index", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        shards.index_store_sharded(path, n_shards=4)
    assert (tmp_path / "f.train.faiss").read_bytes() == before
    assert sorted(tmp_path.glob("f.train.*.shard-*")) == files


def test_max_memory_picks_shards_or_says_what_fits():
    params = IndexParams()
    row = 4 * 384
    assert shards.shards_for_memory(1_281_167, 384, params, 8 * 2**30, 512 * 2**20) == 1
    m = shards.shards_for_memory(1_281_167, 384, params, 1 * 2**30, 512 * 2**20)
    assert np.ceil(1_281_167 / m) * row + 512 * 2**20 <= 2**30
    assert np.ceil(1_281_167 / (m - 1)) * row + 512 * 2**20 > 2**30
    with pytest.raises(InputError, match="cannot hold one index shard plus a query chunk") as exc:
        shards.shards_for_memory(1_281_167, 384, params, 513 * 2**20, 512 * 2**20)
    assert "give --max-memory" in exc.value.hint


@pytest.mark.parametrize(
    "text,value",
    [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5g", int(1.5 * 2**30)), ("100", 100), ("2GiB", 2 * 2**30)],
)
def test_parse_size(text, value):
    assert shards.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "8X", "-1G", "0", "G"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        shards.parse_size(text)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_merge_topk_equals_ranking_the_union(n_parts, k, seed):
    """Merging per-part top k one part at a time == sorting all candidates (ties by id)."""
    rng = np.random.default_rng(seed)
    B, n = 3, n_parts * k
    ids = rng.permutation(10 * n)[:n].reshape(1, n).repeat(B, 0)
    sims = rng.integers(0, 4, size=(B, n)).astype(np.float64)  # many ties
    X = rng.normal(size=(B, n, 2)).astype(np.float32)
    best = None
    for p in range(n_parts):
        sl = slice(p * k, (p + 1) * k)
        o = rank_order(sims[:, sl], ids[:, sl])  # each part arrives re-ranked, as a searcher returns it
        t = np.take_along_axis
        part = (t(ids[:, sl], o, 1), t(sims[:, sl], o, 1), t(X[:, sl], o[:, :, None], 1), np.zeros((B, k), bool))
        best = part if best is None else merge_topk(best, part, k)
    for b in range(B):
        oracle = sorted(range(n), key=lambda j: (-sims[b, j], ids[b, j]))[:k]
        np.testing.assert_array_equal(best[0][b], ids[b, oracle])
        np.testing.assert_array_equal(best[2][b], X[b, oracle])


def test_shard_rows_edited_in_place_are_caught_naming_the_row(tmp_path):
    # h5py writes into the split without touching its recorded content hash: the manifest's
    # fingerprint still matches, so each shard is compared with a sample of its own rows
    import h5py

    xt, yt, xq, yq = two_splits(60, 8, 6, seed=7)
    path = tmp_path / "f.h5"
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    shards.index_store_sharded(path, n_shards=3)
    before = classify(path, k=3)
    with h5py.File(path, "r+") as f:
        f["train/features"][45] = -f["train/features"][45]
    with pytest.raises(StaleIndexError, match=r"does not hold the current rows of split 'train' \(row 45 differs\)"):
        classify(path, k=3)
    doc = classify(path, k=3, rebuild_index=True)
    assert doc["index"]["rebuilt"] and doc["index"]["shards"] == 3
    assert before["index"]["shards"] == 3


def test_a_killed_builds_half_written_shard_is_removed_by_the_next_build(tmp_path):
    """``nnk index --shards 3`` SIGKILLed while shard 2 was written left its temporary file after a
    later successful rebuild (the shard's name carries the dead build's token)."""
    import os
    import subprocess
    import sys

    xt, yt, _, _ = two_splits(45, 4, 5, seed=6)
    path = tmp_path / "f.h5"
    write_split(path, "train", xt, yt, source="test")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    killed = tmp_path / f".f.train.0badcafe.shard-2-of-3.faiss.tmp-{child.pid}-1234abcd"
    killed.write_bytes(b"\0" * 1000)
    live = tmp_path / f".f.train.0badcafe.shard-1-of-3.faiss.tmp-{os.getppid()}-1234abcd"  # a writer still running
    live.write_bytes(b"\0" * 10)
    other = tmp_path / f".g.train.0badcafe.shard-2-of-3.faiss.tmp-{child.pid}-1234abcd"  # another index's
    other.write_bytes(b"")
    shards.index_store_sharded(path, n_shards=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert killed.name not in names
    assert live.name in names and other.name in names
    assert len([n for n in names if n.startswith("f.train.") and ".shard-" in n]) == 3


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory):
    """Train rows that occur 2-4 times each under different labels (ties at every k), and queries that
    are train rows themselves; one flat index and sharded ones of 2, 7 and 65 shards (2 rows each)."""
    root = tmp_path_factory.mktemp("dup")
    path = root / "d.h5"
    xt0, _, xq, yq = two_splits(70, 24, 6, seed=11)
    rng = np.random.default_rng(5)
    xt = xt0[rng.integers(0, 70, 130)]
    yt = rng.integers(0, 4, 130)
    xq = np.concatenate([xq, xt[:8]])
    yq = np.concatenate([yq, yt[:8]])
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    index_store(path, out=root / "flat.faiss")
    for m in (2, 7, 65):
        shards.index_store_sharded(path, out=root / f"s{m}.faiss", n_shards=m)
    return path, root, xt, xq


@pytest.mark.parametrize("n_shards", [2, 7, 65])
def test_sharded_search_is_the_flat_searchs_bit_for_bit(duplicated, n_shards):
    """Candidate ids (as a set, the exact k-th last), re-ranked ids, similarities and vectors equal the flat
    index's for any block of queries, any k, and leave-one-out, on data full of exact ties."""
    from nnkcli.index import set_threads

    _, root, xt, xq = duplicated
    before = faiss.omp_get_max_threads()
    set_threads(1)  # faiss's heaps on one thread: hundreds of tiny searches, each short
    try:
        _compare_searchers(root, xt, xq, n_shards).close()
    finally:
        set_threads(before)


@pytest.mark.parametrize("n_shards", [2, 7, 65])
def test_sharded_bf16_search_is_the_flat_fp32_searchs_bit_for_bit(duplicated, n_shards, bf16_library):
    """The bfloat16 kernel on shards (rows rounded block by block, no copy held) gives the flat float32 search's
    ids, similarities and vectors, ties included."""
    from nnkcli.index import set_threads

    _, root, xt, xq = duplicated
    before = faiss.omp_get_max_threads()
    set_threads(1)
    try:
        sharded = _compare_searchers(root, xt, xq, n_shards, kernel="bf16")
    finally:
        set_threads(before)
    assert sharded.search_kernel == "bf16"
    assert sharded._rows.bf16 is not None and sharded._rows.bf16.low is None  # streamed: no bfloat16 copy
    sharded.close()


def _compare_searchers(root, xt, xq, n_shards, kernel="fp32"):
    from nnkcli.evaluation.search import IndexSearcher
    from nnkcli.evaluation.sharded_search import ShardedSearcher
    from nnkcli.index import load_index
    from nnkcli.numerics.kernels import normalize_rows

    flat = IndexSearcher(load_index(root / "flat.faiss"))
    sharded = ShardedSearcher(shards.Manifest(root / f"s{n_shards}.faiss"), kernel=kernel)
    assert sharded.two_stage and sharded.thread_safe
    for queries, exclude_self in ((normalize_rows(xq), False), (normalize_rows(xt), True)):
        for block in (1, 13, len(queries)):
            for k in (1, 9, 40) if block > 1 else (9,):
                for start in range(0, len(queries) if block > 1 else 20, block):
                    q = queries[start : start + block]
                    want = flat.search_ids(q, start, k, exclude_self)
                    got = sharded.search_ids(q, start, k, exclude_self)
                    # the same set (the exact top k), the same exact k-th last; the re-ranking orders the rest
                    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
                    np.testing.assert_array_equal(got[:, -1], want[:, -1])
                    for a, b in zip(sharded.refine(q, got), flat.refine(q, want), strict=True):
                        np.testing.assert_array_equal(a, b)
    assert sharded.loads == n_shards  # each shard mapped once, then searched from the mapping
    return sharded


@pytest.mark.parametrize(
    ("chunk_size", "threads"),
    [pytest.param(1, 1, marks=pytest.mark.slow), pytest.param(7, 2, marks=pytest.mark.slow), (64, 2)],
)
def test_sharded_predictions_files_are_the_flat_ones(duplicated, tmp_path, chunk_size, threads):
    """Every dataset of the predictions files (neighbors, weights, predictions) equal, whatever the chunk
    and threads. Merging each shard's re-ranked top k (before) broke the flat index's ties differently."""
    _same_predictions(duplicated, tmp_path, chunk_size, threads, "fp32")


def test_sharded_bf16_predictions_files_are_the_flat_fp32_ones(duplicated, tmp_path, bf16_library):
    _same_predictions(duplicated, tmp_path, 7, 2, "bf16")


def _same_predictions(duplicated, tmp_path, chunk_size, threads, kernel):
    path, root, _, _ = duplicated
    kw = dict(k=12, methods=("knn", "nnk"), chunk_size=chunk_size, threads=threads)
    classify(path, index_path=root / "flat.faiss", predictions_path=tmp_path / "a.h5", search_kernel="fp32", **kw)
    got = classify(path, index_path=root / "s7.faiss", predictions_path=tmp_path / "b.h5", search_kernel=kernel, **kw)
    assert got.to_dict()["timing"]["search_kernel"] == kernel
    for a, b in zip(_neighbors(tmp_path / "a.h5"), _neighbors(tmp_path / "b.h5"), strict=True):
        np.testing.assert_array_equal(a, b)
    import h5py

    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        assert names
        for n in names:
            np.testing.assert_array_equal(fa[n][()], fb[n][()], err_msg=n)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    start=st.integers(-12, 40),
    stop=st.integers(-12, 40),
    step=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_concat_rows_reads_as_the_concatenated_array(sizes, start, stop, step, seed):
    """Slices (inside one part, across parts, strided, empty, negative bounds) and gathers of any shape read what
    np.concatenate of the parts holds; a slice inside one part is a view of its memory."""
    from nnkcli.storage.concat_rows import ConcatRows

    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    whole = np.concatenate(parts)
    rows = ConcatRows(parts)
    assert rows.shape == whole.shape and len(rows) == len(whole)
    got = rows[start:stop:step]
    np.testing.assert_array_equal(got, whole[start:stop:step])
    lo, hi, st_ = slice(start, stop, step).indices(len(whole))
    if (
        st_ == 1
        and hi > lo
        and np.searchsorted(np.cumsum(sizes), lo, side="right")
        == np.searchsorted(np.cumsum(sizes), hi - 1, side="right")
    ):
        assert any(np.shares_memory(got, p) for p in parts)  # one part's rows: no copy
    ids = rng.integers(0, len(whole), size=(2, 4))
    np.testing.assert_array_equal(rows.take(ids), whole[ids])
    np.testing.assert_array_equal(rows[ids[0]], whole[ids[0]])
    assert rows.take(np.zeros((0,), dtype=np.int64)).shape == (0, 3)


class _SpyRows:
    """ConcatRows that records how many rows each slice or gather returned."""

    def __init__(self, parts):
        from nnkcli.storage.concat_rows import ConcatRows

        self.rows, self.largest = ConcatRows(parts), 0
        self.shape = self.rows.shape

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        out = self.rows[key]
        self.largest = max(self.largest, len(out))
        return out


@pytest.mark.parametrize("kernel", ["fp32", "bf16"])
def test_a_few_queries_never_read_the_whole_sharded_index_at_once(monkeypatch, kernel):
    """A search of 2 queries (a fallback, a last block) took all rows as one block: over several shards a copy of
    the whole index (a 50,000-query sweep's anonymous memory rose from 0.3 to 2.8 GB). Blocks now hold at most
    the block size in rows too, whatever the number of queries."""
    import nnkcli.index_flat as flat
    import nnkcli.index_kernel as kern

    if kernel == "bf16":
        from nnkcli.index_bf16 import bf16_unavailable

        if bf16_unavailable() is not None:
            pytest.skip(bf16_unavailable())
    d = 8
    monkeypatch.setattr(flat, "FLAT_MIN_ROWS", 16)
    monkeypatch.setattr(flat, "FLAT_BLOCK_BYTES", 4 * d * 64)  # 64 rows of d float32
    monkeypatch.setattr(kern, "BF16_BLOCK_ELEMENTS", 64 * d)
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(100, d)).astype(np.float32) for _ in range(5)]
    for p in parts:
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    rows = _SpyRows(parts)
    q = parts[2][:2].copy()
    if kernel == "fp32":
        flat.flat_search(rows, q, 7)
    else:
        prepared = kern.KernelRows(rows, "bf16", stream=True)  # its norms read 8 MiB blocks, once
        rows.largest = 0
        kern.kernel_search(rows, q, 7, "bf16", rows=prepared)
    assert 0 < rows.largest <= 64
