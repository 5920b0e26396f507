"""nnkcli.index: faiss search agrees with brute force; save/load; fingerprints; stale indexes.

The index file's own checks (checksum, damage, declared type) are in test_index_file.py, the
exact flat search in test_index_flat.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnk_index_data import ArraySplit, clustered, saved_index
from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.index import (
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
from nnkcli.index_file import MAGIC


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


def test_a_flat_index_searches_with_flat_search():
    x = normalize_rows(clustered(n=500))
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


def test_payload_of_other_data_behind_a_matching_header_is_refused(tmp_path):
    x, path = saved_index(tmp_path)
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
    x, path = saved_index(tmp_path)
    edited = ArraySplit(x)
    edited.x = edited.x.copy()
    edited.x[:, :] = edited.x[::-1]  # rows shuffled, content_sha256 kept as recorded
    check_fresh(load_index(path), ArraySplit(x))  # the unedited split passes
    with pytest.raises(StaleIndexError, match="changed in place"):
        check_fresh(load_index(path), edited)
