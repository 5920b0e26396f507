"""The feature store: one versioned HDF5 file holding the splits of one model.

Layout (``format_version`` 1)::

    /                       attrs: nnk_format="features", format_version=1
    /classes                (C,) utf-8 strings: class names, shared by all splits
    /<split>/features       (n, d) float32 or float16, chunked by rows
    /<split>/labels         (n,) int64 ids into /classes, -1 = unlabelled
    /<split>/ids            (n,) utf-8 strings, optional (sample ids / file paths)
    /<split>                attrs: source, created_at, nnkcli_version, content_sha256,
                            checkpoint_sha256 (when known), importer and user pairs

All splits share ``d`` and the class list. This is the only module that imports h5py.

Writes never modify the live file: the new store is built in a temporary file beside
it (the other splits copied over), then moved over the old one with ``os.replace``,
under an advisory lock so that two writers cannot lose each other's split. A crash,
SIGKILL or Ctrl-C at any moment leaves the old store or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from nnkcli import __version__
from nnkcli.storage.attrs import from_attr, to_attr
from nnkcli.storage.atomic import (
    atomic_output,
    check_can_create,
    check_free_space,
    discard_temp,
    file_lock,
    forget_temp,
    fsync_dir,
    fsync_file,
    output_error,
    real_path,
    remove_dead_temps,
    temp_path_for,
)
from nnkcli.storage.checks import (
    ContentTally,
    as_row_source,
    check_feature_array,
    check_ids,
    check_split_name,
    default_chunk_rows,
    to_stored,
)
from nnkcli.errors import InputError, StoreError
from nnkcli.storage.labels import class_counts, map_labels

logger = logging.getLogger("nnkcli")

FORMAT_NAME = "features"
FORMAT_VERSION = 1
#: split attributes that nnkcli sets itself; callers (and ``--meta``) cannot set them
RESERVED_ATTRS = frozenset({"source", "created_at", "nnkcli_version", "content_sha256"})
_STR = h5py.string_dtype("utf-8")
_HDF5_CHUNK_BYTES = 1 << 20
#: class ids allowed in a store without a /classes list
MAX_CLASSES = 1 << 24


def _open_h5(path, mode: str) -> h5py.File:
    # HDF5's own file locking is redundant with our replace-and-lock protocol and
    # fails on some network filesystems, so it is switched off where supported.
    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # pragma: no cover - very old h5py
        return h5py.File(path, mode)


@contextlib.contextmanager
def _h5_for_writing(tmp: Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``tmp`` that is flushed before it is closed, and safely dropped on failure."""
    h5 = _open_h5(tmp, "w")
    try:
        yield h5
        h5.flush()  # a full disk fails here, as an exception, rather than in close()
    except BaseException:
        _discard_h5(h5, tmp)
        raise
    try:
        h5.close()
    except BaseException:
        _discard_h5(h5, tmp)
        raise


def _discard_h5(h5: h5py.File, tmp: Path) -> None:
    """Close a half-written HDF5 file that is going to be deleted.

    After a write failed for lack of space, HDF5 2.0 retries the failed writes when
    the file is closed and can crash the process doing so. Emptying the file first
    frees the space those writes need (its content is being thrown away anyway).
    """
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        h5.close()


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` of disk for a file being written, so that its writes cannot hit a full disk.

    HDF5 writes inside the reserved range and cuts the file back to what it used when
    it closes; a full disk is thus found here, before anything is written, rather than
    in the middle of HDF5's writes (where HDF5 2.0 can crash).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            return  # a filesystem without preallocation: the free-space check has to do
        raise
    finally:
        os.close(fd)


def _plain(value):
    """HDF5 attribute values as plain Python (str, int, float, bool, list); JSON text stays text."""
    return from_attr(value, decode_json=False)


# -- reading ------------------------------------------------------------------------------
class Split:
    """One split of a store: features (read lazily, by rows), labels, ids, provenance.

    Attributes
    ----------
    name : str
    n, dim : int
        Number of rows and feature dimension.
    dtype : np.dtype
        Stored dtype of the features (float32 or float16).
    features : h5py.Dataset, shape (n, dim)
        Slicing reads only the rows asked for (``split.features[1000:2000]``).
    attrs : dict
        Provenance: source, created_at, nnkcli_version, content_sha256, user pairs.
    """

    def __init__(self, store: FeatureStore, name: str, group: h5py.Group):
        self.store = store
        self.name = name
        self._group = group
        self.features = group["features"]
        self._check_schema()
        self.n, self.dim = (int(s) for s in self.features.shape)
        self.dtype = np.dtype(self.features.dtype)
        self.attrs = {key: _plain(value) for key, value in group.attrs.items()}

    def _bad(self, what: str) -> StoreError:
        return StoreError(f"{self.store.path}: split '{self.name}' {what}",
                          hint="the file was not written by nnk extract (or it is damaged); recreate the split")

    def _check_schema(self) -> None:
        """Shapes, dtypes and sizes from the metadata alone (nothing is read), before anything trusts them."""
        feats = self.features
        if len(feats.shape) != 2 or feats.shape[1] < 1:
            raise self._bad(f"has features of shape {tuple(feats.shape)}; expected a 2-D (n, d) array")
        if h5py.check_string_dtype(feats.dtype) is not None or np.dtype(feats.dtype).kind != "f":
            raise self._bad(f"has features of dtype {feats.dtype}; expected floating-point numbers")
        n = int(feats.shape[0])
        nbytes = n * int(feats.shape[1]) * np.dtype(feats.dtype).itemsize
        # a dataset can declare any shape and store nothing (2**40 rows in a few KiB): unfiltered data
        # must actually be in the file, or every read would return the fill value (and labels would
        # ask for TiB allocations)
        if nbytes and not feats.compression and not feats.id.get_create_plist().get_nfilters():
            stored = feats.id.get_storage_size()
            if stored < nbytes:
                raise self._bad(f"declares {n} rows ({nbytes / 2**20:.1f} MiB of features) but the file holds "
                                f"only {stored / 2**20:.1f} MiB of them")
        for name in ("labels", "ids"):
            obj = self._group.get(name)
            if obj is None:
                continue
            if not isinstance(obj, h5py.Dataset) or len(obj.shape) != 1 or int(obj.shape[0]) != n:
                shape = tuple(obj.shape) if isinstance(obj, h5py.Dataset) else "a group"
                raise self._bad(f"has {name} of shape {shape} for {n} feature rows; expected ({n},)")
        labels = self._group.get("labels")
        if labels is not None and np.dtype(labels.dtype).kind not in "iu":
            raise self._bad(f"has labels of dtype {labels.dtype}; expected integer class ids")
        ids = self._group.get("ids")
        if ids is not None and h5py.check_string_dtype(ids.dtype) is None:
            raise self._bad(f"has ids of dtype {ids.dtype}; expected strings")

    def __repr__(self) -> str:
        return f"<Split {self.name!r}: {self.n} x {self.dim} {self.dtype}>"

    def __len__(self) -> int:
        return self.n

    @cached_property
    def labels(self) -> np.ndarray:
        """Class ids, int64 of shape (n,); -1 = unlabelled (all -1 when the split has none)."""
        if "labels" not in self._group:
            return np.full(self.n, -1, dtype=np.int64)
        labels = np.asarray(self._group["labels"][()], dtype=np.int64)
        n_classes = len(self.store.classes) if self.store.classes is not None else MAX_CLASSES
        bad = np.flatnonzero((labels < -1) | (labels >= n_classes))
        if bad.size:
            if self.store.classes is not None:
                where = f"the {n_classes} classes of /classes"
            else:
                where = f"0..{MAX_CLASSES - 1}"
            raise self._bad(f"has label {int(labels[bad[0]])} at row {int(bad[0])}, outside {where} "
                            f"({bad.size} such rows)")
        return labels

    @cached_property
    def ids(self) -> list[str] | None:
        """Sample ids (file paths, dataset indices), or None when the split has none."""
        if "ids" not in self._group:
            return None
        return list(self._group["ids"].asstr()[()])

    @cached_property
    def content_sha256(self) -> str:
        """sha256 over the stored feature bytes then the int64 label bytes (hex).

        Stored when the split is written; computed here, in chunks, for stores written
        by other tools.
        """
        stored = self.attrs.get("content_sha256")
        if isinstance(stored, str) and len(stored) == 64:
            return stored
        hasher = hashlib.sha256()
        step = default_chunk_rows(self.dim, self.dtype.itemsize)
        for start in range(0, self.n, step):
            block = self.features[start:start + step]
            hasher.update(np.ascontiguousarray(block, dtype=self.dtype.newbyteorder("<")))
        hasher.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return hasher.hexdigest()

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a float32 array of shape (stop - start, dim)."""
        stop = self.n if stop is None else min(stop, self.n)
        return np.asarray(self.features[start:stop], dtype=np.float32)

    def read_rows(self, rows) -> np.ndarray:
        """The rows ``rows`` (strictly increasing ints) as a float32 array of shape (len(rows), dim)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if rows[0] < 0 or rows[-1] >= self.n or (np.diff(rows) <= 0).any():
            raise InputError(f"rows must increase strictly within 0..{self.n - 1}")
        return np.asarray(self.features[rows], dtype=np.float32)

    def iter_chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` with ``block`` float32 of shape (m, dim), m <= chunk_rows."""
        step = chunk_rows or default_chunk_rows(self.dim)
        if step < 1:
            raise InputError(f"chunk_rows must be >= 1; got {chunk_rows}")
        for start in range(0, self.n, step):
            yield start, self.read(start, start + step)

    def class_counts(self) -> tuple[dict[str, int], int]:
        """Counts per class name (every class of the store, zeros included) and unlabelled rows."""
        names = self.store.classes or []
        n_classes = max(len(names), int(self.labels.max(initial=-1)) + 1)
        counts, unlabelled = class_counts(self.labels, n_classes)
        keys = [names[i] if i < len(names) else str(i) for i in range(n_classes)]
        return dict(zip(keys, (int(c) for c in counts))), unlabelled

    def describe(self) -> dict:
        counts, unlabelled = self.class_counts()
        return {
            "n": self.n,
            "dim": self.dim,
            "dtype": str(self.dtype),
            "n_classes": sum(1 for c in counts.values() if c > 0),
            "unlabelled": unlabelled,
            "has_ids": "ids" in self._group,
            "class_counts": counts,
            "attrs": dict(self.attrs),
        }


class FeatureStore:
    """Read access to a feature store (a context manager; the file stays open until ``close``).

    Parameters
    ----------
    path : path-like
        The store file.

    Raises
    ------
    StoreError
        The file is missing, unreadable, not HDF5, not an nnkcli store, or of a newer format.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5 = None
        if not self.path.exists():
            raise StoreError(
                f"store not found: {path}",
                hint=f"create it with: nnk extract {path} --split train --from FEATURES",
            )
        if self.path.is_dir():
            raise StoreError(f"{path} is a folder, not a feature store", hint="give the path of the .h5 store file")
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"cannot read {path}: permission denied", hint="check the file's permissions")
        try:
            self._h5 = _open_h5(self.path, "r")
        except OSError as exc:
            raise StoreError(
                f"{path} is not an HDF5 file (or it is damaged)",
                hint="a feature store is made with: nnk extract STORE --split NAME --from FEATURES",
            ) from exc
        try:
            self._check_format()
            self.attrs = {key: _plain(value) for key, value in self._h5.attrs.items()}
            self.classes = self._read_classes()
            self.splits = sorted(
                name for name, obj in self._h5.items()
                if isinstance(obj, h5py.Group) and "features" in obj
            )
            self._split_cache: dict[str, Split] = {}
            for name in self.splits:  # every split's schema is checked now, from metadata only
                self._check_split_name(name)
                if not isinstance(self._h5[name].get("features"), h5py.Dataset):
                    raise StoreError(f"{self.path}: split '{name}' has no features dataset",
                                     hint="the file was not written by nnk extract (or it is damaged)")
                self.split(name)
            self.dim = self.split(self.splits[0]).dim if self.splits else None
        except BaseException:
            self.close()
            raise

    def _read_classes(self) -> list[str] | None:
        if "classes" not in self._h5:
            return None
        obj = self._h5["classes"]
        if not isinstance(obj, h5py.Dataset) or len(obj.shape) != 1 or h5py.check_string_dtype(obj.dtype) is None:
            what = f"{obj.dtype} of shape {obj.shape}" if isinstance(obj, h5py.Dataset) else "a group"
            raise StoreError(f"{self.path}: /classes is {what}; expected a 1-D list of class names (strings)",
                             hint="the file was not written by nnk extract (or it is damaged)")
        return [str(c) for c in obj.asstr()[()]]

    def _check_split_name(self, name: str) -> None:
        try:
            check_split_name(name)
        except InputError:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise StoreError(
                f"{self.path} holds a split with an invalid name {shown!r} ({len(name)} characters)",
                hint="split names are letters, digits, '_', '-' or '.', at most 100 characters; "
                     "rename the group or recreate the store",
            ) from None

    def _check_format(self) -> None:
        fmt = _plain(self._h5.attrs.get("nnk_format"))
        if fmt != FORMAT_NAME:
            raise StoreError(
                f"{self.path} is not an nnkcli feature store",
                hint="it lacks the nnk_format='features' attribute; make a store with nnk extract",
            )
        version = _plain(self._h5.attrs.get("format_version"))
        if not isinstance(version, int) or version < 1:
            raise StoreError(f"{self.path} has an invalid format_version {version!r}",
                             hint="recreate it with nnk extract")
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} uses store format version {version}; this nnkcli reads version {FORMAT_VERSION}",
                hint="upgrade nnkcli: pip install -U nnkcli",
            )

    # -- access ---------------------------------------------------------------------------
    def split(self, name: str) -> Split:
        """The split called ``name``; StoreError naming the available ones if it is missing."""
        if name not in self.splits:
            available = ", ".join(self.splits) if self.splits else "none"
            raise StoreError(
                f"split '{name}' not found in {self.path}",
                hint=f"available splits: {available}",
            )
        if name not in self._split_cache:
            self._split_cache[name] = Split(self, name, self._h5[name])
        return self._split_cache[name]

    def __contains__(self, name: object) -> bool:
        return name in self.splits

    def __getitem__(self, name: str) -> Split:
        return self.split(name)

    def __iter__(self) -> Iterator[Split]:
        return (self.split(name) for name in self.splits)

    def __repr__(self) -> str:
        return f"<FeatureStore {str(self.path)!r}: splits={self.splits}, dim={self.dim}>"

    def describe(self) -> dict:
        """What ``nnk info --format json`` prints (without ``schema_version``)."""
        return {
            "store": str(self.path),
            "format_version": int(self.attrs.get("format_version", FORMAT_VERSION)),
            "dim": self.dim,
            "classes": list(self.classes) if self.classes is not None else None,
            "splits": {name: self.split(name).describe() for name in self.splits},
        }

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        h5 = getattr(self, "_h5", None)  # None also when __init__ was stopped before opening it
        if h5 is not None:
            with contextlib.suppress(Exception):
                h5.close()
            self._h5 = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        self.close()


# -- writing ------------------------------------------------------------------------------
class _StoreState:
    """What a write needs to know about the current store (or its absence)."""

    def __init__(self, path: Path):
        self.exists = path.exists()
        self.classes: list[str] | None = None
        self.dims: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}
        if self.exists:
            with FeatureStore(path) as store:
                self.classes = store.classes
                self.dims = {s.name: s.dim for s in store}
                self.nbytes = {s.name: s.n * (s.dim * s.dtype.itemsize + 8) for s in store}

    def check(self, path: Path, split: str, d: int, overwrite: bool) -> None:
        if split in self.dims and not overwrite:
            raise StoreError(f"split '{split}' already exists in {path}", hint="pass --overwrite to replace it")
        others = {name: dim for name, dim in self.dims.items() if name != split}
        if others:
            store_d = next(iter(others.values()))
            if d != store_d:
                raise InputError(
                    f"features have dimension {d} but {path} holds dimension {store_d}",
                    hint="all splits of a store share one feature dimension; write to another store",
                )


def check_attrs(attrs: dict | None) -> dict:
    """Provenance pairs as HDF5-storable values; reserved names are refused."""
    out = {}
    for key, value in (attrs or {}).items():
        if not isinstance(key, str) or not key or "/" in key:
            raise InputError(f"invalid attribute name {key!r}", hint="use a plain word such as 'run' or 'epoch'")
        if key in RESERVED_ATTRS or key in ("nnk_format", "format_version"):
            raise InputError(
                f"attribute '{key}' is set by nnkcli and cannot be given",
                hint=f"choose another name; reserved: {', '.join(sorted(RESERVED_ATTRS))}",
            )
        if value is None:
            continue
        out[key] = to_attr(value)
    return out


def _hdf5_chunk_rows(n: int, d: int, itemsize: int) -> int:
    return int(max(1, min(n, _HDF5_CHUNK_BYTES // max(1, d * itemsize))))


def commit_split(
    store_path: str | os.PathLike,
    split: str,
    features,
    labels=None,
    *,
    class_names: Sequence[str] | None = None,
    ids=None,
    source: str,
    attrs: dict | None = None,
    overwrite: bool = False,
    chunk_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
    checked: tuple[int, int, np.dtype] | None = None,
    lock_timeout: float | None = None,
) -> dict:
    """Write one split atomically (the shared back end of ``write_split`` and ``SplitWriter``).

    ``checked`` is the result of ``check_feature_array`` when the caller already ran it.
    A symbolic link to a store is written through: its target gets the new split.
    """
    given = Path(store_path)
    path = real_path(given)
    check_split_name(split)
    if not isinstance(source, str) or not source:
        raise InputError("source must be a non-empty string describing where the features came from")
    user_attrs = check_attrs(attrs)
    features = as_row_source(features)
    n, d, stored_dtype = checked or check_feature_array(features)
    ids = check_ids(ids, n)
    if not path.parent.is_dir():
        raise StoreError(f"folder not found for the store: {given.parent}", hint="create the folder first")
    if path.exists() and path.is_dir():
        raise StoreError(f"{given} is a folder, not a feature store", hint="give the path of the .h5 store file")
    check_can_create(path, "store")
    step = chunk_rows or default_chunk_rows(d, max(4, np.dtype(features.dtype).itemsize))

    with file_lock(path, timeout=lock_timeout, remove_if_absent=True):
        state = _StoreState(path)
        state.check(given, split, d, overwrite)
        mapping = map_labels(labels, n=n, class_names=class_names, existing_classes=state.classes)
        kept = sum(size for name, size in state.nbytes.items() if name != split)
        ids_bytes = sum(len(i) + 16 for i in ids) if ids is not None else 0
        need = kept + n * (d * stored_dtype.itemsize + 8) + ids_bytes
        check_free_space(path, need + 2**20, "store")
        with atomic_output(path, what="store") as tmp, _h5_for_writing(tmp) as dst:
            _reserve(tmp, need)
            if state.exists:
                with _open_h5(path, "r") as src:
                    for key, value in src.attrs.items():
                        dst.attrs[key] = value
                    for name in state.dims:
                        if name != split:
                            src.copy(src[name], dst, name=name)
                            dst.flush()
            dst.attrs["nnk_format"] = FORMAT_NAME
            dst.attrs["format_version"] = FORMAT_VERSION
            if mapping.classes:
                dst.create_dataset("classes", data=np.array(mapping.classes, dtype=object), dtype=_STR)
            digest = _write_group(
                dst.create_group(split), features, mapping.ids, ids, n, d, stored_dtype, step, progress,
                flush=dst.flush,
            )
            group = dst[split]
            group.attrs["source"] = source
            group.attrs["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            group.attrs["nnkcli_version"] = __version__
            group.attrs["content_sha256"] = digest
            for key, value in user_attrs.items():
                group.attrs[key] = value

    counts, unlabelled = class_counts(mapping.ids, len(mapping.classes))
    return {
        "store": str(given),
        "split": split,
        "n": n,
        "dim": d,
        "dtype": str(np.dtype(stored_dtype.newbyteorder("="))),
        "n_classes": int((counts > 0).sum()),
        "unlabelled": unlabelled,
        "store_classes": len(mapping.classes),
        "new_classes": list(mapping.new_classes),
        "replaced": split in state.dims,
        "source": source,
        "content_sha256": digest,
    }


def _write_group(group, features, labels, ids, n, d, stored_dtype, step, progress, flush=None) -> str:
    """Stream ``features`` into ``group``, validating and hashing each block; returns the hash."""
    dset = group.create_dataset(
        "features", shape=(n, d), dtype=stored_dtype, chunks=(_hdf5_chunk_rows(n, d, stored_dtype.itemsize), d)
    )
    tally = ContentTally()
    hasher = hashlib.sha256()
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = to_stored(features[start:stop], stored_dtype)
        if block.shape != (stop - start, d):
            raise InputError(f"features returned a block of shape {block.shape} for rows {start}:{stop}")
        # after the first bad block keep counting (the error says how many) but stop writing
        if tally.update(block, start) and tally.ok:
            dset[start:stop] = block
            hasher.update(block)  # contiguous: hashed in place, no copy
            if flush is not None:
                flush()  # a full disk is reported now, as an exception (see _discard_h5)
        if progress is not None:
            progress(stop - start)
    tally.raise_if_bad()
    labels_le = np.ascontiguousarray(labels, dtype="<i8")
    group.create_dataset("labels", data=labels_le, chunks=True if n > 0 else None)
    hasher.update(labels_le.tobytes())
    if ids is not None:
        group.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
    return hasher.hexdigest()


def write_split(
    store_path: str | os.PathLike,
    split: str,
    features,
    labels=None,
    *,
    ids=None,
    class_names: Sequence[str] | None = None,
    source: str,
    attrs: dict | None = None,
    overwrite: bool = False,
    chunk_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
    lock_timeout: float | None = None,
) -> dict:
    """Add (or replace) one split of a store, atomically; create the store if needed.

    Parameters
    ----------
    store_path : path-like
        The store file (created when missing; its folder must exist).
    split : str
        Split name, e.g. ``"train"``.
    features : array-like, shape (n, d)
        Anything with ``shape``, ``dtype`` and row slicing: numpy array, ``np.memmap``,
        h5py dataset, torch tensor. Copied in blocks of ``chunk_rows`` rows, so a
        memory-mapped input is never loaded whole. float16 stays float16, every other
        real dtype is stored as float32.
    labels : array-like, shape (n,), optional
        Integers (``-1`` = unlabelled) or strings; mapped to contiguous ids and
        reconciled by name with the store's class list (see ``nnkcli.storage.labels``).
        None: the split is unlabelled.
    ids : sequence of str, length n, optional
        Sample ids (file paths, dataset indices).
    class_names : sequence of str, optional
        Names for integer labels (labels index into it) or the order of string labels.
    source : str
        What was imported (provenance).
    attrs : dict, optional
        More provenance pairs (``checkpoint_sha256``, ``--meta`` pairs ...).
    overwrite : bool, default=False
        Replace an existing split of that name (otherwise StoreError).
    chunk_rows : int, optional
        Rows per streamed block (default: about 32 MB of input).
    progress : callable, optional
        Called with the number of rows after each block.
    lock_timeout : float, optional
        Seconds to wait for another writer of the store (``LockTimeout`` after
        that); None waits as long as it takes. A wait over a second is logged.

    Returns
    -------
    dict
        Summary: store, split, n, dim, dtype, n_classes, unlabelled, store_classes,
        new_classes, replaced, source, content_sha256.

    Raises
    ------
    InputError
        Bad arrays (wrong ndim, complex/object dtype, empty, NaN/Inf or all-zero rows,
        length mismatch, a dimension different from the store's). Nothing is written.
    StoreError
        The split exists (without ``overwrite``), or the path is not a store.
    """
    return commit_split(
        store_path, split, features, labels, class_names=class_names, ids=ids, source=source, attrs=attrs,
        overwrite=overwrite, chunk_rows=chunk_rows, progress=progress, lock_timeout=lock_timeout,
    )


def check_writable(store_path: str | os.PathLike, split: str, d: int, overwrite: bool) -> None:
    """Fail early (before a long extraction) if ``split`` could not be written to the store."""
    given = Path(store_path)
    path = real_path(given)
    check_split_name(split)
    if not path.parent.is_dir():
        raise StoreError(f"folder not found for the store: {given.parent}", hint="create the folder first")
    check_can_create(path, "store")
    _StoreState(path).check(given, split, d, overwrite)


class ArrayFileWriter:
    """An HDF5 file of named arrays (not a feature store), filled block by block, committed atomically.

    Used for result files such as ``classify --out PRED.h5``; kept here because this is
    the only module that imports h5py. Rows are written into a temporary file beside
    ``path``, which replaces ``path`` only at :meth:`commit`.

    Parameters
    ----------
    path : path-like
        The destination file (its folder must exist).
    kind : str
        What the file holds (``"predictions"``); used in messages.

    Examples
    --------
    >>> with ArrayFileWriter("pred.h5", kind="predictions") as out:  # doctest: +SKIP
    ...     out.create("labels", (n,), np.int64)
    ...     out.write("labels", 0, labels[:100])
    ...     out.set_attrs({"k": 10})
    """

    def __init__(self, path: str | os.PathLike, *, kind: str):
        self.given = Path(path)
        self.path = real_path(self.given)  # a symlink is written through
        self.kind = kind
        if not self.path.parent.is_dir():
            raise StoreError(f"folder not found for the {kind} file: {self.given.parent}",
                             hint="create the folder first")
        if self.path.is_dir():
            raise StoreError(f"{self.given} is a folder", hint=f"give the path of the {kind} .h5 file")
        check_can_create(self.path, kind)
        remove_dead_temps(self.path)
        self._declared_bytes = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._tmp = temp_path_for(self.path)
        try:
            self._h5 = _open_h5(self._tmp, "w")
        except BaseException:  # a failure, or a signal, once HDF5 has created the file
            discard_temp(self._tmp)
            raise

    def create(self, name: str, shape: tuple[int, ...], dtype) -> None:
        """Create dataset ``name`` of ``shape`` (chunked by rows; groups made from ``a/b`` names)."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        chunks = None
        if shape and shape[0] > 0 and all(s > 0 for s in shape):
            row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            chunks = (_hdf5_chunk_rows(shape[0], row, dtype.itemsize),) + shape[1:]
        # kept open: closing a dataset flushes its chunks, and after a failed write that must
        # happen only in abort(), once the file has been emptied (see _discard_h5)
        self._datasets[name] = self._guard(
            lambda: self._h5.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks))
        self._declared_bytes += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def check_space(self) -> None:
        """Refuse to start when the datasets created so far cannot fit on the disk."""
        need = self._declared_bytes + 2**20
        try:
            check_free_space(self.path, need, self.kind)
            _reserve(self._tmp, self._declared_bytes + 2**16)
        except BaseException as exc:
            self.abort()
            err = output_error(exc, self.given, self.kind) if isinstance(exc, Exception) else None
            if err is not None:
                raise err from exc
            raise

    def write(self, name: str, start: int, values) -> None:
        """Write ``values`` (m, ...) into rows ``start .. start+m`` of dataset ``name``."""
        values = np.asarray(values)

        def _write():
            self._datasets[name][start:start + values.shape[0]] = values

        self._guard(_write)

    def flush(self) -> None:
        """Push what was written to the disk (a full disk is reported here, cleanly)."""
        self._guard(self._h5.flush)

    def _guard(self, action):
        """Run ``action``; on a failure drop the temporary file, and name a full disk."""
        try:
            return action()
        except Exception as exc:
            self.abort()
            err = output_error(exc, self.given, self.kind)
            if err is not None:
                raise err from exc
            raise

    def set_attrs(self, attrs: dict) -> None:
        """Root attributes; non-scalar values are stored as JSON strings."""
        for key, value in attrs.items():
            if value is not None:
                self._h5.attrs[key] = to_attr(value)

    def commit(self) -> None:
        """Close the file and move it over ``path`` atomically."""
        self.flush()
        self._datasets = {}
        self._guard(self._h5.close)
        self._guard(self._replace)

    def _replace(self) -> None:
        fsync_file(self._tmp)
        os.replace(self._tmp, self.path)
        forget_temp(self._tmp)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written; ``path`` is left as it was."""
        datasets, self._datasets = self._datasets, {}
        if self._tmp.exists():
            with contextlib.suppress(OSError):
                os.truncate(self._tmp, 0)
        for dset in datasets.values():
            with contextlib.suppress(Exception):
                dset.id.close()
        del datasets
        if self._tmp.exists():
            _discard_h5(self._h5, self._tmp)
        else:
            with contextlib.suppress(Exception):
                self._h5.close()
        discard_temp(self._tmp)

    @contextlib.contextmanager
    def aborted_on_failure(self) -> Iterator[ArrayFileWriter]:
        """A block (declaring datasets, say) after which any exception, a signal included, aborts the file.

        For the code between construction and the ``try`` that would call :meth:`abort`.
        """
        try:
            yield self
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ArrayFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


# The streaming writer, ``SplitWriter``, is in ``storage.split_writer``, which builds on this module
# (re-exporting it here would make an import circle).
__all__ = [
    "ArrayFileWriter", "FORMAT_NAME", "FORMAT_VERSION", "RESERVED_ATTRS", "FeatureStore", "Split",
    "check_attrs", "check_writable", "commit_split", "remove_dead_temps", "write_split",
]
