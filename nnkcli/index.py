"""The persisted faiss index: build, save, load, search, fingerprint.

This is the only module that imports faiss. Features are L2-normalized
(``nnkcli.numerics.kernels.normalize_rows``, pure numpy), so the
inner product is the cosine similarity and an inner-product index returns the
k most similar training rows.

File format (one file, written atomically)::

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
against the payload's faiss class, and ``check_fresh`` compares a sample of the
store's rows with the vectors the index holds, which catches a split edited in
place (its recorded ``content_sha256`` unchanged) or a payload from other data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from nnkcli.storage.atomic import atomic_output, check_can_create, check_free_space, real_path
from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.numerics.kernels import normalize_rows
from nnkcli.settings import Settings, at_least, count, optional_count, setting

logger = logging.getLogger("nnkcli")

MAGIC = b"NNKCLI-INDEX 2\n"
_MAGIC_V1 = b"NNKCLI-INDEX 1\n"
#: the faiss class each declared index type must load as
_FAISS_CLASS = {"flat": "IndexFlat", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}
#: rows of the store compared with the index on load (in blocks: cheap to read from HDF5)
SAMPLE_BLOCKS, SAMPLE_BLOCK_ROWS = 8, 32
INDEX_TYPES = ("flat", "ivf", "hnsw")
#: rows added to the index per step: bounds the memory used while building
DEFAULT_ADD_CHUNK = 65536
#: bytes faiss asks of the file per call while loading (its default is 1 MiB). Each call takes
#: the GIL back; beside a thread that holds it (the compiled kernel's warm-up) every take can
#: wait a switch interval, and 1 MiB calls made a 307 MB index load in 1.2-1.3 s instead of 0.7
READ_BLOCK = 8 * 2**20


@dataclass(frozen=True)
class Fingerprint:
    """What an index was built from. Two fingerprints match when the data matches."""

    split: str
    n: int
    dim: int
    content_sha256: str
    store: str = ""  # informational: the store's path when the index was built

    def matches(self, other: "Fingerprint") -> bool:
        return (self.split, self.n, self.dim, self.content_sha256) == (
            other.split, other.n, other.dim, other.content_sha256,
        )

    @classmethod
    def of_split(cls, split, store_path: str | os.PathLike = "") -> "Fingerprint":
        return cls(
            split=split.name, n=int(split.n), dim=int(split.dim),
            content_sha256=split.content_sha256, store=str(Path(store_path).resolve()) if store_path else "",
        )


@dataclass(frozen=True)
class IndexParams(Settings):
    """How to build (and query) an index: declared settings (``nnkcli.settings``), checked on construction.

    ``nnk index`` generates its options from these fields.
    """

    index_type: str = setting("flat", choices=INDEX_TYPES, what="index type", option="--type",
                              help="flat is exact; ivf and hnsw are approximate, for large stores.")
    nlist: int | None = setting(None, optional_count, type=int, metavar="N",
                                help="ivf: number of cells (default ~ 4*sqrt(n)).")
    nprobe: int | None = setting(None, optional_count, type=int, metavar="N",
                                 help="ivf: cells searched per query (default nlist/16, >= 8).")
    hnsw_m: int = setting(32, at_least(2), type=int, metavar="N", help="hnsw: graph degree.")
    ef_search: int | None = setting(None, optional_count, type=int, metavar="N",
                                    help="hnsw: search depth (default max(64, k)).")
    ef_construction: int = setting(80, count, type=int, metavar="N", help="hnsw: build depth.")


@dataclass
class NnkIndex:
    """A loaded faiss index with the fingerprint of the data it holds."""

    index: Any
    fingerprint: Fingerprint
    params: IndexParams
    path: Path | None = None
    _vectors: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k most similar rows.

        Parameters
        ----------
        queries : ndarray, shape (m, d), float32, rows L2-normalised
        k : int

        Returns
        -------
        sims : ndarray, shape (m, k), float32, descending
        ids : ndarray, shape (m, k), int64 row ids into the indexed split (-1 where
            an approximate index found fewer than k)
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"queries have shape {queries.shape}, the index holds {self.dim}-dimensional vectors")
        if self.params.index_type == "hnsw":
            hnsw = faiss.downcast_index(self.index)
            hnsw.hnsw.efSearch = max(ef_search or self.params.ef_search or 64, k)
        elif self.params.index_type == "flat" and k >= 1 and self._flat() is not None:
            return flat_search(self._flat(), queries, k)
        sims, ids = self.index.search(queries, k)
        return sims, ids.astype(np.int64, copy=False)

    def _flat(self) -> np.ndarray | None:
        """The zero-copy (n, d) view of the stored vectors (``_flat_view``), made once; None if there is none."""
        if self._vectors is None:
            self._vectors = _flat_view(self.index)
        return self._vectors

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of ``ids`` (any shape), shape ``ids.shape + (d,)``, float32."""
        if self._flat() is not None:
            return self._flat()[ids]
        flat = ids.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        self.index.reconstruct_batch(flat, out)
        return out.reshape(*ids.shape, self.dim)


#: bytes of the similarity block of one flat search (faiss's own blocking holds 4,096 x 1,024 float32)
FLAT_BLOCK_BYTES = 16 * 2**20
#: the fewest train rows of a block (a thin product runs far from the machine's peak)
FLAT_MIN_ROWS = 256


def flat_search(vectors: np.ndarray, queries: np.ndarray, k: int, *,
                block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive inner-product top ``k`` of ``queries`` (m, d) among ``vectors`` (n, d), both float32.

    What ``IndexFlatIP.search`` returns (sims descending, ids -1 where n < k), computed
    as faiss computes it -- similarities of a block of train rows at a time by a matrix
    product, each query's best k kept in a heap (faiss's ``float_minheap_array_t``, so a
    tie with the k-th kept value leaves the earlier row in) -- except that the product is
    numpy's. numpy's BLAS is the one ``--threads`` caps and the one a user tunes; the
    OpenBLAS bundled in faiss's wheels is older, and on processors it does not know it
    falls back to a generic kernel: on a 5th-generation Xeon (CPU model 207) faiss's
    search of Fashion-MNIST ran at 30 GFLOP/s on one thread, numpy's product at 100-140.

    The train rows are taken ``block_rows`` at a time, by default ``FLAT_BLOCK_BYTES`` of
    similarities (at least ``FLAT_MIN_ROWS`` rows), so the extra memory is one block, as in
    faiss; the result does not depend on the block size.
    """
    m, n = int(queries.shape[0]), int(vectors.shape[0])
    sims = np.empty((m, k), dtype=np.float32)
    ids = np.empty((m, k), dtype=np.int64)
    if m == 0:
        return sims, ids
    heaps = faiss.float_minheap_array_t()  # a min-heap per query keeps its k largest
    heaps.nh, heaps.k = m, k
    heaps.val, heaps.ids = faiss.swig_ptr(sims), faiss.swig_ptr(ids)
    heaps.heapify()
    if block_rows is None:
        block_rows = max(FLAT_MIN_ROWS, FLAT_BLOCK_BYTES // (4 * m))
    rows = int(min(max(n, 1), max(1, block_rows)))
    buffer = np.empty(m * rows, dtype=np.float32)
    for j0 in range(0, n, rows):
        block = vectors[j0:j0 + rows]
        out = buffer[:m * len(block)].reshape(m, len(block))  # contiguous rows, as the heaps read them
        np.matmul(queries, block.T, out=out)
        heaps.addn(len(block), faiss.swig_ptr(out), j0, 0, m)
    heaps.reorder()
    return sims, ids


def _flat_view(index) -> np.ndarray | None:
    """Zero-copy (n, d) view of the vectors of a flat (or HNSW-over-flat) index, else None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlat) and index.ntotal > 0:
        # the index owns the memory; the view lives as long as the NnkIndex holding it
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return None


def set_threads(threads: int | None) -> None:
    """Threads faiss (OpenMP) may use; None leaves the default (all cores)."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        faiss.omp_set_num_threads(int(threads))


def _default_nlist(n: int) -> int:
    return int(max(1, min(65536, round(4 * math.sqrt(n)))))


def build_index(
    split,
    params: IndexParams = IndexParams(),
    *,
    store_path: str | os.PathLike = "",
    chunk_rows: int = DEFAULT_ADD_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> NnkIndex:
    """Build an inner-product index over the L2-normalised features of a store split.

    Rows are read and added ``chunk_rows`` at a time, so building needs the index's
    own memory plus one chunk.
    """
    params.validate()
    n, d = int(split.n), int(split.dim)
    if n < 1:
        raise InputError(f"split '{split.name}' is empty; nothing to index")
    if params.index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif params.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
    else:
        nlist = min(params.nlist or _default_nlist(n), n)
        params = IndexParams(**{**asdict(params), "nlist": nlist,
                                "nprobe": params.nprobe or max(8, nlist // 16)})
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index frees its quantizer
        index.train(_training_sample(split, max_rows=min(n, 256 * nlist)))
        index.nprobe = min(params.nprobe, nlist)
    for _start, chunk in split.iter_chunks(chunk_rows):
        index.add(normalize_rows(chunk))
        if progress is not None:
            progress(len(chunk))
    if params.index_type == "ivf":
        index.make_direct_map()  # so neighbor vectors can be reconstructed for NNK
    return NnkIndex(index=index, fingerprint=Fingerprint.of_split(split, store_path), params=params)


def _training_sample(split, max_rows: int) -> np.ndarray:
    """Evenly spread contiguous blocks (cheap to read from HDF5) adding up to ``max_rows``."""
    n = int(split.n)
    if max_rows >= n:
        return normalize_rows(split.read(0, n))
    n_blocks = min(64, max_rows)
    block = max(1, max_rows // n_blocks)
    starts = np.linspace(0, n - block, n_blocks).astype(np.int64)
    return normalize_rows(np.concatenate([split.read(int(s), int(s) + block) for s in starts]))


def save_index(nnk_index: NnkIndex, path: str | os.PathLike) -> Path:
    """Write the index, its fingerprint and the payload's checksum to ``path`` atomically."""
    given = Path(path)
    header = {
        "fingerprint": asdict(nnk_index.fingerprint),
        "index": asdict(nnk_index.params),
        "faiss_version": faiss.__version__,
    }
    with atomic_output(given, what="index") as tmp:
        with open(tmp, "wb") as f:
            _write_header(f, header, lambda write: faiss.write_index(nnk_index.index, faiss.PyCallbackIOWriter(write)))
    nnk_index.path = given
    return given


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


def _read_header(f, path: Path, hint: str) -> tuple[dict, int, int | None]:
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
        raise IndexFileError(f"{path} is not an nnkcli index file (or its header is damaged)", hint=hint) from None
    if crc is None:
        logger.warning(f"index file {path} has no payload checksum (made by an older nnkcli); rebuild it with "
                       "'nnk index STORE' so that damage to it is detected")
    return header, payload_size, crc


def load_index(path: str | os.PathLike) -> NnkIndex:
    """Read an index written by :func:`save_index`.

    Raises IndexFileError for a missing, truncated, damaged (checksum) or crafted file
    (a payload that is not the declared type, a header that does not fit it).
    """
    path = Path(path)
    hint = "rebuild it with 'nnk index STORE'"
    try:
        f = open(real_path(path), "rb")
    except FileNotFoundError:
        raise IndexFileError(f"index file not found: {path}", hint="build it with 'nnk index STORE'") from None
    except OSError as exc:
        raise IndexFileError(f"cannot read index file {path}: {exc.strerror}") from None
    with f:
        header, payload_size, crc = _read_header(f, path, hint)
        try:
            fingerprint = Fingerprint(**header["fingerprint"])
            params = IndexParams(**header["index"]).validate()
            if not isinstance(fingerprint.n, int) or not isinstance(fingerprint.dim, int):
                raise TypeError("n and dim must be integers")
        except (KeyError, TypeError, InputError):
            raise IndexFileError(f"{path} is not an nnkcli index file (or its header is damaged)", hint=hint) from None
        payload_start = f.tell()
        actual = os.fstat(f.fileno()).st_size - payload_start
        if actual != payload_size:
            raise IndexFileError(
                f"index file {path} is truncated or damaged ({actual} of {payload_size} payload bytes)", hint=hint
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
                    hint=hint,
                )
        if failure is not None:
            raise IndexFileError(f"index file {path} is damaged: faiss cannot read it", hint=hint) from None
    _check_payload(index, params, fingerprint, path, hint)
    if params.index_type == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(params.nprobe or 8, ivf.nlist)
    return NnkIndex(index=index, fingerprint=fingerprint, params=params, path=path)


def _check_payload(index, params: IndexParams, fingerprint: Fingerprint, path: Path, hint: str) -> None:
    """The payload is the index type the header declares, over inner products, with the declared shape."""
    index = faiss.downcast_index(index)
    expected = _FAISS_CLASS[params.index_type]
    actual = type(index).__name__
    ok = actual == expected or (params.index_type == "flat" and actual == "IndexFlatIP")
    if ok and params.index_type == "hnsw":
        ok = type(faiss.downcast_index(index.storage)).__name__ in ("IndexFlat", "IndexFlatIP")
    if not ok:
        raise IndexFileError(
            f"index file {path} declares a {params.index_type} index but holds a faiss {actual}", hint=hint
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFileError(f"index file {path} does not rank by inner product (cosine)", hint=hint)
    if params.index_type == "ivf" and index.direct_map.type == faiss.DirectMap.NoMap:
        raise IndexFileError(f"index file {path} is an ivf index without the row map NNK needs", hint=hint)
    if index.d != fingerprint.dim or index.ntotal != fingerprint.n:
        raise IndexFileError(f"index file {path} is inconsistent with its own header", hint=hint)


def default_index_path(store_path: str | os.PathLike, split: str) -> Path:
    """``feats.h5`` + ``train`` -> ``feats.train.faiss`` beside the store."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.stem}.{split}.faiss")


def check_fresh(nnk_index: NnkIndex, split, *, store_path: str | os.PathLike = "") -> None:
    """Refuse an index whose data is not the split's current data."""
    current = Fingerprint.of_split(split, store_path)
    if nnk_index.fingerprint.dim != current.dim:
        raise IndexFileError(
            f"index {nnk_index.path} holds {nnk_index.fingerprint.dim}-dimensional vectors but split "
            f"'{split.name}' has dimension {current.dim}",
            hint="rebuild it with 'nnk index STORE' (or pass --rebuild-index)",
        )
    if not nnk_index.fingerprint.matches(current):
        raise stale_error(f"index {nnk_index.path}", nnk_index.fingerprint, split.name, current, "nnk index STORE")
    check_sample(nnk_index, split)


def stale_error(what: str, built: Fingerprint, split_name: str, current: Fingerprint, command: str) -> StaleIndexError:
    """The error of an index (``what``) built from other data than the split's current data."""
    return StaleIndexError(
        f"{what} is stale: it was built from split '{built.split}' ({built.n} rows, content "
        f"{built.content_sha256[:12]}), the store's split '{split_name}' now has {current.n} rows, "
        f"content {current.content_sha256[:12]}",
        hint=f"rerun '{command}' (or pass --rebuild-index to rebuild it now)",
    )


def check_sample(nnk_index: NnkIndex, split, *, seed: int = 0, command: str = "nnk index STORE",
                 first_row: int = 0) -> None:
    """Compare a few hundred rows of the split with the vectors the index holds.

    The fingerprint trusts the ``content_sha256`` recorded when the split was
    written; a split edited in place (with h5py, say) keeps it, and a payload from
    other data can sit behind a matching header. The index holds the normalised
    rows (exactly for flat and hnsw, ivf keeps them too), so ``SAMPLE_BLOCKS``
    random blocks of ``SAMPLE_BLOCK_ROWS`` rows, read from the store and normalised,
    must equal what the index returns for those ids. Cost: ~256 rows read. ``split``
    may be a row range of a split (a shard's ``SplitRange``) that starts at row
    ``first_row`` of the whole split, which the error names rows by.
    """
    n = int(split.n)
    if n == 0 or nnk_index.n != n:
        return
    rows = min(SAMPLE_BLOCK_ROWS, n)
    rng = np.random.default_rng(seed)
    starts = np.unique(rng.integers(0, n - rows + 1, size=SAMPLE_BLOCKS))
    for start in (int(s) for s in starts):
        stored = normalize_rows(split.read(start, start + rows))
        held = nnk_index.vectors(np.arange(start, start + rows, dtype=np.int64))
        bad = np.flatnonzero(~np.isclose(stored, held, rtol=1e-4, atol=1e-5).all(axis=1))
        if bad.size:
            raise StaleIndexError(
                f"index {nnk_index.path} does not hold the current rows of split '{split.name}' "
                f"(row {first_row + start + int(bad[0])} differs): the split was changed in place, or the index "
                "was built from other data",
                hint=f"rerun '{command}' (or pass --rebuild-index to rebuild it now)",
            )


def index_store(
    store_path: str | os.PathLike,
    *,
    split: str = "train",
    out: str | os.PathLike | None = None,
    params: IndexParams = IndexParams(),
    threads: int | None = None,
    progress_factory: Callable | None = None,
) -> dict:
    """Build the index of a store split and save it (``nnk index``); returns a summary dict."""
    import time

    from nnkcli.storage.store import FeatureStore

    params.validate()
    set_threads(threads)
    out = Path(out) if out is not None else default_index_path(store_path, split)
    if not out.parent.is_dir():
        raise InputError(f"directory of --out does not exist: {out.parent}")
    check_can_create(out, "index")  # before the index is built, not after
    t0 = time.perf_counter()
    with FeatureStore(store_path) as store:
        sp = store.split(split)
        per_row = sp.dim * 4 + (2 * params.hnsw_m * 4 if params.index_type == "hnsw" else 8)
        check_free_space(out, sp.n * per_row + 2**20, "index")
        if progress_factory is not None:
            with progress_factory(sp.n, "indexing") as advance:
                built = build_index(sp, params, store_path=store_path, progress=advance)
        else:
            built = build_index(sp, params, store_path=store_path)
    build_s = time.perf_counter() - t0
    save_index(built, out)
    logger.info(f"indexed {built.n} rows of '{split}' into {out}")
    return {
        "index": str(out),
        "store": str(store_path),
        "split": split,
        "n": built.n,
        "dim": built.dim,
        "type": built.params.index_type,
        "params": asdict(built.params),
        "content_sha256": built.fingerprint.content_sha256,
        "bytes": out.stat().st_size,
        "build_s": round(build_s, 3),
    }


def flat_index_of_rows(rows: np.ndarray, *, name: str = "in-memory") -> NnkIndex:
    """An exact inner-product index over rows normalised by the caller (in-memory evaluation).

    Parameters
    ----------
    rows : ndarray, shape (n, d), float32
        Unit rows (or all-zero rows, which are then similar to nothing: inner product 0).
    name : str
        The fingerprint's split name.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise InputError(f"cannot index rows of shape {rows.shape}", hint="give a non-empty (n, d) array")
    index = faiss.IndexFlatIP(int(rows.shape[1]))
    for start in range(0, rows.shape[0], DEFAULT_ADD_CHUNK):
        index.add(rows[start : start + DEFAULT_ADD_CHUNK])
    fingerprint = Fingerprint(split=name, n=int(rows.shape[0]), dim=int(rows.shape[1]), content_sha256="in-memory")
    return NnkIndex(index=index, fingerprint=fingerprint, params=IndexParams())
