"""The index file: a JSON header and a faiss payload in one file, written atomically, checked on read.

Format::

    NNKCLI-INDEX 2\\n
    <payload bytes, 20 digits> <payload CRC-32, 8 hex digits>\\n
    {"fingerprint": {...}, "index": {...}, "faiss_version": "..."}\\n   <- one JSON line
    <payload: faiss.write_index output>

Keeping the fingerprint inside the index file (rather than in a sidecar) means an
index and its fingerprint can never come from different runs. The faiss payload
is streamed to and from disk with faiss's callback IO, so neither saving nor
loading holds a second copy of the index in memory. The CRC-32 is computed while
the payload streams (one pass over the bytes, no second read) and checked on load,
so a damaged or hand-edited payload is refused; version-1 files (no checksum) are
still read, with a warning. A CRC detects damage and mix-ups, not tampering (no
checksum kept beside the data could). On load the declared index type is checked
against the payload's faiss class (:func:`check_payload`).

This module knows the container, not what the header means: :func:`nnkcli.index.save_index`
and :func:`nnkcli.index.load_index` build and parse the header (one of the faiss modules of
the index, with :mod:`nnkcli.index` and :mod:`nnkcli.index_flat`).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np

from nnkcli.errors import IndexFileError
from nnkcli.storage.atomic import atomic_output, real_path

logger = logging.getLogger("nnkcli")

T = TypeVar("T")

MAGIC = b"NNKCLI-INDEX 2\n"
_MAGIC_V1 = b"NNKCLI-INDEX 1\n"
#: the faiss class each declared index type must load as
_FAISS_CLASS = {"flat": "IndexFlat", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}
#: bytes faiss asks of the file per call while loading (its default is 1 MiB). Each call takes
#: the GIL back; beside a thread that holds it (the compiled kernel's warm-up) every take can
#: wait a switch interval, and 1 MiB calls made a 307 MB index load in 1.2-1.3 s instead of 0.7
READ_BLOCK = 8 * 2**20
#: what every error about an unusable index file suggests
REBUILD_HINT = "rebuild it with 'nnk index STORE'"


def damaged_header(path: Path) -> IndexFileError:
    """The error of a file that is not an index file, or whose header cannot be used."""
    return IndexFileError(f"{path} is not an nnkcli index file (or its header is damaged)", hint=REBUILD_HINT)


def write_index_file(path: Path, header: dict, index) -> None:
    """Write ``header`` (a JSON object) and the faiss ``index`` to ``path`` atomically, with the payload's checksum."""
    with atomic_output(path, what="index") as tmp:
        with open(tmp, "wb") as f:
            _write_header(f, header, lambda write: faiss.write_index(index, faiss.PyCallbackIOWriter(write)))


def _write_header(f, header: dict, write_payload: Callable) -> None:
    """Magic, a fixed-width size+checksum line (patched in after the payload), the JSON header, the payload.

    ``write_payload(write)`` streams the payload through ``write(bytes)``.
    """
    f.write(MAGIC)
    placeholder_at = f.tell()
    # size and checksum are only known after the payload: reserve fixed-width fields
    f.write(b"0" * 20 + b" " + b"0" * 8 + b"\n")
    f.write(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
    payload_start = f.tell()
    crc = 0

    def write(data) -> int:
        nonlocal crc
        crc = zlib.crc32(data, crc)
        return f.write(data)

    write_payload(write)  # the faiss writer flushes its buffer when it is released
    payload_size = f.tell() - payload_start
    f.seek(placeholder_at)
    f.write(f"{payload_size:020d} {crc:08x}".encode())
    f.seek(0, os.SEEK_END)


def _read_header(f, path: Path) -> tuple[dict, int, int | None]:
    """(JSON header, payload size, payload CRC-32 or None for a version-1 file); ``f`` is left at the payload."""
    try:
        magic = f.read(len(MAGIC))
        if magic not in (MAGIC, _MAGIC_V1):
            raise ValueError("not an nnkcli index file")
        fields = f.readline().split()
        payload_size = int(fields[0])
        crc = int(fields[1], 16) if magic == MAGIC else None
        if payload_size < 0 or (magic == MAGIC and len(fields) != 2) or (magic == _MAGIC_V1 and len(fields) != 1):
            raise ValueError("bad size line")
        header = json.loads(f.readline())
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, IndexError, UnicodeDecodeError):
        raise damaged_header(path) from None
    if crc is None:
        logger.warning(
            f"index file {path} has no payload checksum (made by an older nnkcli); rebuild it with "
            "'nnk index STORE' so that damage to it is detected"
        )
    return header, payload_size, crc


def _open(path: Path):
    """The index file opened for reading (binary), or the ``IndexFileError`` that says why not."""
    try:
        return open(real_path(path), "rb")
    except FileNotFoundError:
        raise IndexFileError(f"index file not found: {path}", hint="build it with 'nnk index STORE'") from None
    except OSError as exc:
        raise IndexFileError(f"cannot read index file {path}: {exc.strerror}") from None


def read_index_file(path: Path, parse_header: Callable[[dict], T]) -> tuple[T, Any]:
    """``(parse_header(header), faiss index)`` of a file written by :func:`write_index_file`.

    ``parse_header`` turns the JSON header into what the caller needs, before the payload
    is read; it raises :class:`IndexFileError` (:func:`damaged_header`) when it cannot.

    Raises
    ------
    IndexFileError
        A missing, unreadable, truncated or damaged (checksum) file, or a payload faiss cannot read.
    """
    f = _open(path)
    with f:
        header, payload_size, crc = _read_header(f, path)
        parsed = parse_header(header)
        payload_start = f.tell()
        actual = os.fstat(f.fileno()).st_size - payload_start
        if actual != payload_size:
            raise IndexFileError(
                f"index file {path} is truncated or damaged ({actual} of {payload_size} payload bytes)",
                hint=REBUILD_HINT,
            )
        seen = 0
        running = 0

        def read(n: int) -> bytes:
            nonlocal seen, running
            data = f.read(n)
            seen += len(data)
            running = zlib.crc32(data, running)
            return data

        index, failure = None, None
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read, READ_BLOCK))
        except (RuntimeError, MemoryError, ValueError, OverflowError) as exc:  # std::bad_alloc is MemoryError
            failure = exc
        if crc is not None:
            while seen < payload_size:  # finish the checksum over what faiss did not read
                if not read(min(1 << 20, payload_size - seen)):
                    break
            if running != crc:
                raise IndexFileError(
                    f"index file {path} is damaged: its payload does not match the checksum in its header",
                    hint=REBUILD_HINT,
                )
        if failure is not None:
            raise IndexFileError(f"index file {path} is damaged: faiss cannot read it", hint=REBUILD_HINT) from None
    return parsed, index


def map_index_file(path: Path, parse_header: Callable[[dict], T]) -> tuple[T, Any, Any]:
    """``(parse_header(header), faiss index, mapping)``: :func:`read_index_file` without reading the vectors in.

    The file is memory-mapped and the vectors of a flat index (the storage of an hnsw one)
    are read by faiss in place (``IO_FLAG_MMAP_IFC``): they are the file's pages in the
    page cache, not a copy in the process's memory. The index is valid while ``mapping``
    (the ``mmap``) lives: keep both together. The payload's checksum is checked here, over
    the mapping (one pass over the file's bytes, no copy).
    """
    f = _open(path)
    with f:
        header, payload_size, crc = _read_header(f, path)
        parsed = parse_header(header)
        payload_start = f.tell()
        actual = os.fstat(f.fileno()).st_size - payload_start
        if actual != payload_size or payload_size == 0:
            raise IndexFileError(
                f"index file {path} is truncated or damaged ({actual} of {payload_size} payload bytes)",
                hint=REBUILD_HINT,
            )
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    payload = np.frombuffer(mapping, dtype=np.uint8, count=payload_size, offset=payload_start)
    if crc is not None and zlib.crc32(memoryview(mapping)[payload_start : payload_start + payload_size]) != crc:
        raise IndexFileError(
            f"index file {path} is damaged: its payload does not match the checksum in its header", hint=REBUILD_HINT
        )
    try:
        index = faiss.read_index(faiss.ZeroCopyIOReader(faiss.swig_ptr(payload), payload_size), faiss.IO_FLAG_MMAP_IFC)
    except (RuntimeError, MemoryError, ValueError, OverflowError):
        raise IndexFileError(f"index file {path} is damaged: faiss cannot read it", hint=REBUILD_HINT) from None
    return parsed, index, mapping


def check_payload(index, index_type: str, dim: int, n: int, path: Path) -> None:
    """The payload is the ``index_type`` the header declares, over inner products, of ``n`` rows of ``dim``."""
    hint = REBUILD_HINT
    index = faiss.downcast_index(index)
    expected = _FAISS_CLASS[index_type]
    actual = type(index).__name__
    ok = actual == expected or (index_type == "flat" and actual == "IndexFlatIP")
    if ok and index_type == "hnsw":
        ok = type(faiss.downcast_index(index.storage)).__name__ in ("IndexFlat", "IndexFlatIP")
    if not ok:
        raise IndexFileError(f"index file {path} declares a {index_type} index but holds a faiss {actual}", hint=hint)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFileError(f"index file {path} does not rank by inner product (cosine)", hint=hint)
    if index_type == "ivf" and index.direct_map.type == faiss.DirectMap.NoMap:
        raise IndexFileError(f"index file {path} is an ivf index without the row map NNK needs", hint=hint)
    if index.d != dim or index.ntotal != n:
        raise IndexFileError(f"index file {path} is inconsistent with its own header", hint=hint)
