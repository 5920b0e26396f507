"""nnkcli.index: faiss search agrees with brute force; save/load; fingerprints; damage detection."""

from __future__ import annotations

import hashlib
import json

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.index import (
    MAGIC,
    Fingerprint,
    IndexParams,
    build_index,
    check_fresh,
    default_index_path,
    flat_search,
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


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), m=st.integers(1, 40), k=st.integers(1, 40), d=st.integers(1, 9),
       block_rows=st.sampled_from([1, 7, 64, 10**6]), seed=st.integers(0, 2**31 - 1))
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


def test_flat_search_of_no_queries_and_an_index_search_use_it():
    x = normalize_rows(clustered(n=500))
    sims, ids = flat_search(x, np.zeros((0, 16), np.float32), 5)
    assert sims.shape == ids.shape == (0, 5)
    idx = build_index(ArraySplit(x))
    q = normalize_rows(clustered(n=30, seed=3))
    np.testing.assert_array_equal(idx.search(q, 7)[1], flat_search(x, q, 7)[1])


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
    # neighbor vectors come back exactly (NNK needs them)
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
    with pytest.raises(InputError, match=r"^nlist: must be >= 1 \(got 0\)$"):
        IndexParams(index_type="ivf", nlist=0).validate()
    with pytest.raises(ValueError, match=r"^hnsw_m: must be >= 2 \(got 1\)$") as err:  # checked on construction
        IndexParams(index_type="hnsw", hnsw_m=1)
    assert err.value.exit_code == 2 and err.value.cli_message().startswith("--hnsw-m: ")


def test_fingerprint_and_default_path(tmp_path):
    a = Fingerprint("train", 10, 4, "abc", store="/x.h5")
    assert a.matches(Fingerprint("train", 10, 4, "abc", store="/moved/x.h5"))
    assert not a.matches(Fingerprint("train", 10, 4, "abd"))
    assert default_index_path(tmp_path / "feats.h5", "train") == tmp_path / "feats.train.faiss"


# -- payload checksum, declared type, row sampling (hardening) -------------------------------
def _saved(tmp_path, index_type="flat", n=600):
    x = clustered(n=n)
    params = IndexParams(index_type=index_type, nlist=8) if index_type == "ivf" else IndexParams(index_type=index_type)
    idx = build_index(ArraySplit(x), params)
    path = tmp_path / f"{index_type}.faiss"
    save_index(idx, path)
    return x, path


def _payload_start(path):
    with open(path, "rb") as f:
        f.readline()
        f.readline()
        f.readline()
        return f.tell()


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_a_changed_payload_byte_fails_the_checksum(tmp_path, index_type):
    _, path = _saved(tmp_path, index_type)
    data = bytearray(path.read_bytes())
    start = _payload_start(path)
    # a byte inside the stored vectors (the payload's last quarter), not in faiss's own header
    pos = start + (len(data) - start) * 3 // 4
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="does not match the checksum"):
        load_index(path)


def test_payload_of_other_data_behind_a_matching_header_is_refused(tmp_path):
    x, path = _saved(tmp_path)
    other = build_index(ArraySplit(clustered(n=600, seed=5)))
    other_path = tmp_path / "other.faiss"
    save_index(other, other_path)
    # the header (fingerprint of x) with the other file's payload and checksum line
    mine, theirs = path.read_bytes(), other_path.read_bytes()
    lines = mine.split(b"\n", 3)
    their_lines = theirs.split(b"\n", 3)
    mixed = tmp_path / "mixed.faiss"
    mixed.write_bytes(b"\n".join([lines[0], their_lines[1], lines[2], their_lines[3]]))
    loaded = load_index(mixed)  # a consistent file as far as it can tell ...
    with pytest.raises(StaleIndexError, match="does not hold the current rows"):
        check_fresh(loaded, ArraySplit(x))  # ... but not the split's rows


def test_in_place_edit_keeping_the_recorded_hash_is_caught(tmp_path):
    x, path = _saved(tmp_path)
    edited = ArraySplit(x)
    edited.x = edited.x.copy()
    edited.x[:, :] = edited.x[::-1]  # rows shuffled, content_sha256 kept as recorded
    check_fresh(load_index(path), ArraySplit(x))  # the unedited split passes
    with pytest.raises(StaleIndexError, match="changed in place"):
        check_fresh(load_index(path), edited)


def _rewrite_header(path, **changes):
    data = path.read_bytes()
    first, sizes, header, payload = data.split(b"\n", 3)
    doc = json.loads(header)
    for key, value in changes.items():
        doc["index"][key] = value
    path.write_bytes(b"\n".join([first, sizes, json.dumps(doc).encode(), payload]))


@pytest.mark.parametrize("claimed", ["ivf", "hnsw"])
def test_declared_type_must_match_the_payload(tmp_path, claimed):
    _, path = _saved(tmp_path, "flat")
    _rewrite_header(path, index_type=claimed)
    with pytest.raises(IndexFileError, match=f"declares a {claimed} index but holds a faiss IndexFlat"):
        load_index(path)


def test_an_idmap_payload_is_refused(tmp_path):
    import faiss

    x = normalize_rows(clustered(n=100))
    inner = faiss.IndexFlatIP(x.shape[1])
    idmap = faiss.IndexIDMap(inner)
    idmap.add_with_ids(x, np.arange(100, dtype=np.int64) * 7)
    from nnkcli.index import NnkIndex

    fp = Fingerprint(split="train", n=100, dim=x.shape[1], content_sha256="0" * 64)
    path = tmp_path / "idmap.faiss"
    save_index(NnkIndex(index=idmap, fingerprint=fp, params=IndexParams()), path)
    with pytest.raises(IndexFileError, match="declares a flat index but holds a faiss IndexIDMap"):
        load_index(path)


def test_version_1_files_still_load_with_a_warning(tmp_path, caplog):
    x, path = _saved(tmp_path)
    first, sizes, header, payload = path.read_bytes().split(b"\n", 3)
    path.write_bytes(b"\n".join([b"NNKCLI-INDEX 1", sizes.split()[0], header, payload]))
    with caplog.at_level("WARNING", logger="nnkcli"):
        loaded = load_index(path)
    assert loaded.n == len(x)
    assert "no payload checksum" in caplog.text
