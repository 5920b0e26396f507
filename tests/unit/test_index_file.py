"""nnkcli.index_file: the index file round-trips, and a truncated, damaged, crafted or foreign file
is refused by name (checksum, declared type, header)."""

from __future__ import annotations

import json
import zlib

import faiss
import numpy as np
import pytest

from nnk_index_data import ArraySplit, clustered, saved_index
from nnkcli.errors import IndexFileError
from nnkcli.index import Fingerprint, IndexParams, build_index, load_index, normalize_rows, save_index
from nnkcli.index_file import MAGIC, damaged_header, read_index_file, write_index_file


def test_the_container_round_trips_any_header(tmp_path):
    x = normalize_rows(clustered(n=300))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    path = tmp_path / "any.faiss"
    write_index_file(path, {"note": "any JSON object", "n": 300}, index)
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    size, crc = data.split(b"\n")[1].split()
    payload = data.split(b"\n", 3)[3]
    assert int(size) == len(payload) and int(crc, 16) == zlib.crc32(payload)
    header, loaded = read_index_file(path, lambda h: h)
    assert header == {"note": "any JSON object", "n": 300}
    assert loaded.ntotal == 300 and loaded.d == x.shape[1]


def test_the_header_is_parsed_before_the_payload_is_read(tmp_path):
    x = normalize_rows(clustered(n=200))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    path = tmp_path / "i.faiss"
    write_index_file(path, {"version": "unknown"}, index)
    path.write_bytes(path.read_bytes()[:-100])  # truncated too: the header's refusal comes first

    def refuse(header):
        raise damaged_header(path)

    with pytest.raises(IndexFileError, match="not an nnkcli index file"):
        read_index_file(path, refuse)
    with pytest.raises(IndexFileError, match="truncated or damaged"):
        read_index_file(path, lambda h: h)


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


# -- payload checksum, declared type (hardening) -----------------------------------------------
def _payload_start(path):
    with open(path, "rb") as f:
        f.readline()
        f.readline()
        f.readline()
        return f.tell()


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_a_changed_payload_byte_fails_the_checksum(tmp_path, index_type):
    _, path = saved_index(tmp_path, index_type)
    data = bytearray(path.read_bytes())
    start = _payload_start(path)
    # a byte inside the stored vectors (the payload's last quarter), not in faiss's own header
    pos = start + (len(data) - start) * 3 // 4
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="does not match the checksum"):
        load_index(path)


def _rewrite_header(path, **changes):
    data = path.read_bytes()
    first, sizes, header, payload = data.split(b"\n", 3)
    doc = json.loads(header)
    for key, value in changes.items():
        doc["index"][key] = value
    path.write_bytes(b"\n".join([first, sizes, json.dumps(doc).encode(), payload]))


@pytest.mark.parametrize("claimed", ["ivf", "hnsw"])
def test_declared_type_must_match_the_payload(tmp_path, claimed):
    _, path = saved_index(tmp_path, "flat")
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
    x, path = saved_index(tmp_path)
    first, sizes, header, payload = path.read_bytes().split(b"\n", 3)
    path.write_bytes(b"\n".join([b"NNKCLI-INDEX 1", sizes.split()[0], header, payload]))
    with caplog.at_level("WARNING", logger="nnkcli"):
        loaded = load_index(path)
    assert loaded.n == len(x)
    assert "no payload checksum" in caplog.text
