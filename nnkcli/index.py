"""The persisted faiss index: build, save, load, search, fingerprint.

The faiss modules are this one and its two siblings: :mod:`nnkcli.index_file` (the
index file: header, checksum, streamed payload) and :mod:`nnkcli.index_flat` (the exact
search of a flat index). Features are L2-normalized (``nnkcli.numerics.kernels.normalize_rows``,
pure numpy), so the inner product is the cosine similarity and an inner-product index
returns the k most similar training rows.

An index file keeps the fingerprint of the data it was built from (see
:mod:`nnkcli.index_file`); on load, ``check_fresh`` compares the fingerprint with the
split's and a sample of the store's rows with the vectors the index holds, which catches
a split edited in place (its recorded ``content_sha256`` unchanged) or a payload from
other data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.index_file import check_payload, damaged_header, map_index_file, read_index_file, write_index_file
from nnkcli.index_flat import flat_search, flat_view
from nnkcli.numerics.kernels import normalize_rows
from nnkcli.settings import Settings, at_least, count, optional_count, setting
from nnkcli.storage.atomic import check_can_create, check_free_space

logger = logging.getLogger("nnkcli")

#: rows of the store compared with the index on load (in blocks: cheap to read from HDF5)
SAMPLE_BLOCKS, SAMPLE_BLOCK_ROWS = 8, 32
INDEX_TYPES = ("flat", "ivf", "hnsw")
#: rows added to the index per step: bounds the memory used while building
DEFAULT_ADD_CHUNK = 65536


@dataclass(frozen=True)
class Fingerprint:
    """What an index was built from. Two fingerprints match when the data matches."""

    split: str
    n: int
    dim: int
    content_sha256: str
    store: str = ""  # informational: the store's path when the index was built

    def matches(self, other: Fingerprint) -> bool:
        return (self.split, self.n, self.dim, self.content_sha256) == (
            other.split,
            other.n,
            other.dim,
            other.content_sha256,
        )

    @classmethod
    def of_split(cls, split, store_path: str | os.PathLike = "") -> Fingerprint:
        return cls(
            split=split.name,
            n=int(split.n),
            dim=int(split.dim),
            content_sha256=split.content_sha256,
            store=str(Path(store_path).resolve()) if store_path else "",
        )


@dataclass(frozen=True)
class IndexParams(Settings):
    """How to build (and query) an index: declared settings (``nnkcli.settings``), checked on construction.

    ``nnk index`` generates its options from these fields.
    """

    index_type: str = setting(
        "flat",
        choices=INDEX_TYPES,
        what="index type",
        option="--type",
        help="flat is exact; ivf and hnsw are approximate, for large stores.",
    )
    nlist: int | None = setting(
        None, optional_count, type=int, metavar="N", help="ivf: number of cells (default ~ 4*sqrt(n))."
    )
    nprobe: int | None = setting(
        None, optional_count, type=int, metavar="N", help="ivf: cells searched per query (default nlist/16, >= 8)."
    )
    hnsw_m: int = setting(32, at_least(2), type=int, metavar="N", help="hnsw: graph degree.")
    ef_search: int | None = setting(
        None, optional_count, type=int, metavar="N", help="hnsw: search depth (default max(64, k))."
    )
    ef_construction: int = setting(80, count, type=int, metavar="N", help="hnsw: build depth.")


@dataclass
class NnkIndex:
    """A loaded faiss index with the fingerprint of the data it holds."""

    index: Any
    fingerprint: Fingerprint
    params: IndexParams
    path: Path | None = None
    _vectors: np.ndarray | None = field(default=None, repr=False)
    #: the file's memory mapping, when the vectors are read in place (``load_index(mapped=True)``)
    _mapping: Any = field(default=None, repr=False)

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
        elif self.params.index_type == "flat" and k >= 1 and (stored := self._flat()) is not None:
            return flat_search(stored, queries, k)
        sims, ids = self.index.search(queries, k)
        return sims, ids.astype(np.int64, copy=False)

    def _flat(self) -> np.ndarray | None:
        """The zero-copy (n, d) view of the stored vectors (``flat_view``), made once; None if there is none."""
        if self._vectors is None:
            self._vectors = flat_view(self.index)
        return self._vectors

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of ``ids`` (any shape), shape ``ids.shape + (d,)``, float32."""
        stored = self._flat()
        if stored is not None:
            return stored[ids]
        flat = ids.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        self.index.reconstruct_batch(flat, out)
        return out.reshape(*ids.shape, self.dim)


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
        nprobe = params.nprobe or max(8, nlist // 16)
        params = IndexParams(**{**asdict(params), "nlist": nlist, "nprobe": nprobe})
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index frees its quantizer
        index.train(_training_sample(split, max_rows=min(n, 256 * nlist)))
        index.nprobe = min(nprobe, nlist)
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
    write_index_file(given, header, nnk_index.index)
    nnk_index.path = given
    return given


def load_index(path: str | os.PathLike, *, mapped: bool = False) -> NnkIndex:
    """Read an index written by :func:`save_index`.

    ``mapped``: the vectors of a flat index stay in the file, memory-mapped (the page cache
    holds them, not the process: :func:`nnkcli.index_file.map_index_file`), rather than read in.

    Raises IndexFileError for a missing, truncated, damaged (checksum) or crafted file
    (a payload that is not the declared type, a header that does not fit it).
    """
    path = Path(path)

    def parse(header: dict) -> tuple[Fingerprint, IndexParams]:
        try:
            fingerprint = Fingerprint(**header["fingerprint"])
            params = IndexParams(**header["index"]).validate()
            if not isinstance(fingerprint.n, int) or not isinstance(fingerprint.dim, int):
                raise TypeError("n and dim must be integers")
        except (KeyError, TypeError, InputError):
            raise damaged_header(path) from None
        return fingerprint, params

    mapping = None
    if mapped:
        (fingerprint, params), index, mapping = map_index_file(path, parse)
    else:
        (fingerprint, params), index = read_index_file(path, parse)
    check_payload(index, params.index_type, fingerprint.dim, fingerprint.n, path)
    if params.index_type == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(params.nprobe or 8, ivf.nlist)
    return NnkIndex(index=index, fingerprint=fingerprint, params=params, path=path, _mapping=mapping)


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


def check_sample(
    nnk_index: NnkIndex, split, *, seed: int = 0, command: str = "nnk index STORE", first_row: int = 0
) -> None:
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
            with progress_factory(sp.n, "building the index") as advance:
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
