"""nnkcli.index_parts: rows held in several arrays are searched as the flat search of their concatenation,
bit for bit -- ties, rounding and short or misaligned parts included -- and a mapped index file reads its
vectors in place."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnk_index_data import ArraySplit, clustered
from nnkcli.errors import IndexFileError
from nnkcli.index import build_index, load_index, save_index
from nnkcli.index_file import MAGIC
from nnkcli.index_flat import flat_search
from nnkcli.index_parts import parts_search


def _heap_model(values: list[float], k: int) -> set[int]:
    """faiss's top-k heap written out: a row enters only above the smallest kept value, and evicts the kept
    row of smallest value, the smallest id among those tied."""
    kept: list[tuple[float, int]] = []
    for row, v in enumerate(values):
        if len(kept) < k:
            kept.append((v, row))
        elif v > min(kept)[0]:
            kept.remove(min(kept))
            kept.append((v, row))
    return {row for _, row in kept}


def _split(x: np.ndarray, cuts: list[int], misalign: list[bool]) -> list[np.ndarray]:
    """``x`` cut at ``cuts``; a part whose flag is set is copied to memory that is not float32-aligned."""
    bounds = [0, *sorted(set(cuts)), len(x)]
    parts = []
    for (a, b), shift in zip(zip(bounds, bounds[1:]), misalign, strict=False):
        part = x[a:b]
        if shift:
            raw = np.empty(part.nbytes + 1, dtype=np.uint8)
            moved = raw[1:].view(np.float32).reshape(part.shape)
            moved[:] = part
            assert not moved.flags.aligned
            part = moved
        parts.append(part)
    return parts


def test_ties_are_the_flat_searchs_not_the_earliest_rows():
    """Of rows (0.5, 0.5, 0.5, 0.9) at k = 2 the heap keeps rows 1 and 3: merging two halves' top 2 by
    (value, row) would keep rows 0 and 3; the search over the parts keeps the flat search's."""
    x = np.array([[0.5], [0.5], [0.5], [0.9]], dtype=np.float32)
    q = np.ones((1, 1), dtype=np.float32)
    _, flat_ids = flat_search(x, q, 2)
    assert set(flat_ids[0]) == _heap_model([0.5, 0.5, 0.5, 0.9], 2) == {1, 3}
    _, ids = parts_search([x[:2], x[2:]], q, 2)
    np.testing.assert_array_equal(ids, flat_ids)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 160),
    m=st.integers(1, 12),
    k=st.integers(1, 25),
    d=st.integers(1, 6),
    n_cuts=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_tied_rows_keep_the_heaps_choice_across_parts(n, m, k, d, n_cuts, seed):
    """Small integer vectors with many duplicate rows: exact products, many ties at the k-th value. The
    kept rows are the heap model's, and the ids and values are the flat search's, in the same order."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(max(1, n // 3), d)).astype(np.float32)[rng.integers(0, max(1, n // 3), n)]
    q = rng.integers(-2, 3, size=(m, d)).astype(np.float32)
    parts = _split(x, list(rng.integers(1, max(n, 2), n_cuts)) if n > 1 else [], list(rng.random(8) < 0.5))
    sims, ids = parts_search(parts, q, k)
    flat_sims, flat_ids = flat_search(x, q, k)
    np.testing.assert_array_equal(ids, flat_ids)
    np.testing.assert_array_equal(sims, flat_sims)
    for i in range(m):
        assert set(ids[i][ids[i] >= 0]) == _heap_model([float(v) for v in x @ q[i]], k)


@pytest.mark.parametrize(
    "m, d",
    [(300, 64), *(pytest.param(m, d, marks=pytest.mark.slow) for m, d in [(1, 64), (2, 7), (37, 7), (37, 64)])],
)  # one query: BLAS's matrix-vector product
def test_rounded_products_are_the_flat_searchs(m, d):
    """Real-valued vectors, duplicate rows and one-row parts: every similarity must come from the same
    float32 arithmetic as the flat search's (the same blocks: BLAS rounds a thin product differently)."""
    rng = np.random.default_rng(m * 100 + d)
    base = rng.standard_normal((300, d)).astype(np.float32)
    x = base[rng.integers(0, 300, 700)]
    q = rng.standard_normal((m, d)).astype(np.float32)
    for cuts in ([1], [3, 4, 500, 699], list(range(100, 700, 97))):
        parts = _split(x, cuts, [i % 2 == 1 for i in range(len(cuts) + 1)])
        for k in (1, 40):
            sims, ids = parts_search(parts, q, k)
            flat_sims, flat_ids = flat_search(x, q, k)
            np.testing.assert_array_equal(ids, flat_ids)
            np.testing.assert_array_equal(sims, flat_sims)


def test_more_neighbors_than_rows_pads_as_the_flat_search():
    x = np.eye(3, dtype=np.float32)
    q = np.ones((2, 3), dtype=np.float32)
    got, want = parts_search([x[:1], x[1:]], q, 5), flat_search(x, q, 5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1][:, 3:] == -1).all()


def test_a_mapped_index_reads_its_vectors_in_place_and_checks_its_payload(tmp_path):
    built = build_index(ArraySplit(clustered(n=300)))
    path = tmp_path / "i.faiss"
    save_index(built, path)
    mapped = load_index(path, mapped=True)
    assert mapped._mapping is not None and mapped.fingerprint == built.fingerprint
    ids = np.array([[0, 299], [5, 5]])
    np.testing.assert_array_equal(mapped.vectors(ids), built.vectors(ids))
    # the vectors are the file's bytes: the mapping's view does not own its memory
    assert not mapped._flat().flags.owndata
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x40  # a byte of the stored vectors
    (tmp_path / "bad.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="does not match the checksum"):
        load_index(tmp_path / "bad.faiss", mapped=True)
    (tmp_path / "short.faiss").write_bytes(bytes(data[:-10]))
    with pytest.raises(IndexFileError, match="truncated or damaged"):
        load_index(tmp_path / "short.faiss", mapped=True)
    head = bytes(data).index(b"\n", len(MAGIC) + 21) + 1
    (tmp_path / "junk.faiss").write_bytes(bytes(data[:head]) + b"\xff" * (len(data) - head))
    with pytest.raises(IndexFileError, match="damaged"):
        load_index(tmp_path / "junk.faiss", mapped=True)
