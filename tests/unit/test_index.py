"""nnkcli.index: faiss search agrees with brute force; save/load; fingerprints; damage detection."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.index import (
    MAGIC,
    Fingerprint,
    IndexParams,
    build_index,
    check_fresh,
    default_index_path,
    load_index,
    normalize_rows,
    save_index,
)


class ArraySplit:
    """The part of store.Split that the index needs, over an in-memory array."""

    def __init__(self, x, name="train"):
        self.x = np.asarray(x, dtype=np.float32)
        self.name = name
        self.n, self.dim = self.x.shape
        self.content_sha256 = hashlib.sha256(self.x.tobytes()).hexdigest()

    def iter_chunks(self, rows):
        for s in range(0, self.n, rows):
            yield s, self.x[s : s + rows]

    def read(self, start=0, stop=None):
        return self.x[start:stop]


def clustered(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    return (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def brute_force(x, q, k):
    xn, qn = normalize_rows(x).astype(np.float64), normalize_rows(q).astype(np.float64)
    s = qn @ xn.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def test_flat_search_equals_brute_force():
    x = clustered()
    q = clustered(n=50, seed=1)
    idx = build_index(ArraySplit(x), chunk_rows=300)  # several add chunks
    sims, ids = idx.search(normalize_rows(q), 10)
    ref_s, ref_ids = brute_force(x, q, 10)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert (ids == ref_ids).mean() > 0.99  # only float32 near-ties may swap
    np.testing.assert_allclose(np.take_along_axis(normalize_rows(q) @ normalize_rows(x).T, ids, 1), ref_s, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(kind):
    x = clustered(n=3000)
    q = clustered(n=100, seed=2)
    params = IndexParams(index_type=kind, nlist=32, nprobe=16, ef_search=128)
    idx = build_index(ArraySplit(x), params)
    _, ids = idx.search(normalize_rows(q), 10)
    _, ref = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall > 0.9
    # neighbour vectors come back exactly (NNK needs them)
    np.testing.assert_allclose(idx.vectors(ref[:3]), normalize_rows(x)[ref[:3]], atol=1e-6)


def test_vectors_are_the_normalised_rows():
    x = clustered(n=100)
    idx = build_index(ArraySplit(x))
    ids = np.array([[3, 7], [99, 0]])
    np.testing.assert_allclose(idx.vectors(ids), normalize_rows(x)[ids], atol=1e-7)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    x = clustered(n=1000)
    split = ArraySplit(x)
    idx = build_index(split, IndexParams(index_type=kind, nlist=16))
    path = tmp_path / "f.train.faiss"
    save_index(idx, path)
    assert path.read_bytes().startswith(MAGIC)
    loaded = load_index(path)
    assert loaded.fingerprint == idx.fingerprint
    assert loaded.params.index_type == kind
    q = normalize_rows(x[:20])
    np.testing.assert_array_equal(loaded.search(q, 5)[1], idx.search(q, 5)[1])
    check_fresh(loaded, split)  # same data: accepted


def test_stale_index_is_refused(tmp_path):
    x = clustered(n=500)
    idx = build_index(ArraySplit(x))
    changed = x.copy()
    changed[0, 0] += 1.0
    with pytest.raises(StaleIndexError, match="is stale"):
        check_fresh(idx, ArraySplit(changed))
    with pytest.raises(IndexFileError, match="16-dimensional"):
        check_fresh(idx, ArraySplit(clustered(n=500, d=8)))


def test_truncated_and_corrupt_files(tmp_path):
    idx = build_index(ArraySplit(clustered(n=500)))
    path = tmp_path / "i.faiss"
    save_index(idx, path)
    data = path.read_bytes()
    (tmp_path / "trunc.faiss").write_bytes(data[:-100])
    with pytest.raises(IndexFileError, match="truncated or damaged"):
        load_index(tmp_path / "trunc.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"hello world\n" * 10)
    with pytest.raises(IndexFileError, match="not an nnkcli index file"):
        load_index(tmp_path / "junk.faiss")
    # right size, damaged payload: faiss itself refuses it
    header_end = data.index(b"\n", len(MAGIC) + 21) + 1
    bad = data[:header_end] + b"\xff" * (len(data) - header_end)
    (tmp_path / "bad.faiss").write_bytes(bad)
    with pytest.raises(IndexFileError, match="damaged"):
        load_index(tmp_path / "bad.faiss")
    with pytest.raises(IndexFileError, match="not found"):
        load_index(tmp_path / "missing.faiss")


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    import faiss

    path = tmp_path / "i.faiss"
    save_index(build_index(ArraySplit(clustered(n=200))), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(KeyboardInterrupt):
        save_index(build_index(ArraySplit(clustered(n=300))), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]  # no temp file left


def test_zero_rows_and_bad_params():
    x = clustered(n=50)
    x[7] = 0
    with pytest.raises(InputError, match=r"1 feature rows are all-zero or not finite \(first: row 7\)"):
        build_index(ArraySplit(x))
    with pytest.raises(InputError, match="unknown index type"):
        IndexParams(index_type="lsh").validate()
    with pytest.raises(InputError, match="--nlist must be >= 1"):
        IndexParams(index_type="ivf", nlist=0).validate()


def test_fingerprint_and_default_path(tmp_path):
    a = Fingerprint("train", 10, 4, "abc", store="/x.h5")
    assert a.matches(Fingerprint("train", 10, 4, "abc", store="/moved/x.h5"))
    assert not a.matches(Fingerprint("train", 10, 4, "abd"))
    assert default_index_path(tmp_path / "feats.h5", "train") == tmp_path / "feats.train.faiss"
