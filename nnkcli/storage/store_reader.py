"""Reading a feature store: :class:`FeatureStore` and its :class:`Split` objects.

The layout (``format_version`` 1)::

    /                       attrs: nnk_format="features", format_version=1
    /classes                (C,) utf-8 strings: class names, shared by all splits
    /<split>/features       (n, d) float32 or float16, chunked by rows
    /<split>/labels         (n,) int64 ids into /classes, -1 = unlabelled
    /<split>/ids            (n,) utf-8 strings, optional (sample ids / file paths)
    /<split>                attrs: source, created_at, nnkcli_version, content_sha256,
                            checkpoint_sha256 (when known), importer and user pairs

All splits share ``d`` and the class list. Opening a store checks every split's schema
from the metadata alone; features are read lazily, by rows. Writing is
:mod:`nnkcli.storage.store` (which also re-exports the names defined here).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from nnkcli.errors import InputError, StoreError
from nnkcli.storage.attrs import from_attr
from nnkcli.storage.checks import check_split_name, default_chunk_rows
from nnkcli.storage.hdf5 import open_h5
from nnkcli.storage.labels import class_counts

FORMAT_NAME = "features"
FORMAT_VERSION = 1
#: class ids allowed in a store without a /classes list
MAX_CLASSES = 1 << 24


def _plain(value):
    """HDF5 attribute values as plain Python (str, int, float, bool, list); JSON text stays text."""
    return from_attr(value, decode_json=False)


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
        # list(): h5py's views are generators that hold its global lock between items; a signal raised
        # in a Python loop over one leaves it suspended with the lock held, and every other thread's
        # h5py call then waits forever. Drained in C, an interrupt strikes inside it and releases it.
        self.attrs = {key: _plain(value) for key, value in list(group.attrs.items())}

    def _bad(self, what: str) -> StoreError:
        return StoreError(
            f"{self.store.path}: split '{self.name}' {what}",
            hint="the file was not written by nnk extract (or it is damaged); recreate the split",
        )

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
                raise self._bad(
                    f"declares {n} rows ({nbytes / 2**20:.1f} MiB of features) but the file holds "
                    f"only {stored / 2**20:.1f} MiB of them"
                )
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
            raise self._bad(
                f"has label {int(labels[bad[0]])} at row {int(bad[0])}, outside {where} ({bad.size} such rows)"
            )
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
            block = self.features[start : start + step]
            # .data: the array's own buffer (no copy); numpy's stubs declare the buffer protocol only for 3.12+
            hasher.update(np.ascontiguousarray(block, dtype=self.dtype.newbyteorder("<")).data)
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
        return dict(zip(keys, (int(c) for c in counts), strict=True)), unlabelled

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

    Examples
    --------
    >>> with FeatureStore(demo_store) as store:
    ...     store.splits, store.dim, store["val"].read(0, 5).shape
    (['train', 'val'], 8, (5, 8))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: h5py.File | None = None
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
            self._h5 = h5 = open_h5(self.path, "r")
        except OSError as exc:
            raise StoreError(
                f"{path} is not an HDF5 file (or it is damaged)",
                hint="a feature store is made with: nnk extract STORE --split NAME --from FEATURES",
            ) from exc
        try:
            self._check_format(h5)
            self.attrs = {key: _plain(value) for key, value in list(h5.attrs.items())}
            self.classes = self._read_classes(h5)
            self.splits = sorted(
                name for name, obj in list(h5.items()) if isinstance(obj, h5py.Group) and "features" in obj
            )
            self._split_cache: dict[str, Split] = {}
            for name in self.splits:  # every split's schema is checked now, from metadata only
                self._check_split_name(name)
                if not isinstance(h5[name].get("features"), h5py.Dataset):
                    raise StoreError(
                        f"{self.path}: split '{name}' has no features dataset",
                        hint="the file was not written by nnk extract (or it is damaged)",
                    )
                self._split_cache[name] = Split(self, name, h5[name])
            self.dim = self.split(self.splits[0]).dim if self.splits else None
        except BaseException:
            self.close()
            raise

    def _read_classes(self, h5: h5py.File) -> list[str] | None:
        if "classes" not in h5:
            return None
        obj = h5["classes"]
        if not isinstance(obj, h5py.Dataset) or len(obj.shape) != 1 or h5py.check_string_dtype(obj.dtype) is None:
            what = f"{obj.dtype} of shape {obj.shape}" if isinstance(obj, h5py.Dataset) else "a group"
            raise StoreError(
                f"{self.path}: /classes is {what}; expected a 1-D list of class names (strings)",
                hint="the file was not written by nnk extract (or it is damaged)",
            )
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

    def _check_format(self, h5: h5py.File) -> None:
        fmt = _plain(h5.attrs.get("nnk_format"))
        if fmt != FORMAT_NAME:
            raise StoreError(
                f"{self.path} is not an nnkcli feature store",
                hint="it lacks the nnk_format='features' attribute; make a store with nnk extract",
            )
        version = _plain(h5.attrs.get("format_version"))
        if not isinstance(version, int) or version < 1:
            raise StoreError(
                f"{self.path} has an invalid format_version {version!r}", hint="recreate it with nnk extract"
            )
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
        return self._split_cache[name]  # every split is checked and cached when the store opens

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


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_CLASSES", "FeatureStore", "Split"]
