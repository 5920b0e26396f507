"""The feature store: one versioned HDF5 file holding the splits of one model; writing a split.

Layout (``format_version`` 1)::

    /                       attrs: nnk_format="features", format_version=1
    /classes                (C,) utf-8 strings: class names, shared by all splits
    /<split>/features       (n, d) float32 or float16, chunked by rows
    /<split>/labels         (n,) int64 ids into /classes, -1 = unlabelled
    /<split>/ids            (n,) utf-8 strings, optional (sample ids / file paths)
    /<split>                attrs: source, created_at, nnkcli_version, content_sha256,
                            checkpoint_sha256 (when known), importer and user pairs

All splits share ``d`` and the class list. Reading (:class:`FeatureStore`, :class:`Split`)
is :mod:`nnkcli.storage.store_reader`, re-exported here, so that this module offers the
store's whole public face: ``from nnkcli.storage.store import FeatureStore, write_split``.

Writes never modify the live file: the new store is built in a temporary file beside
it (the other splits copied over), then moved over the old one with ``os.replace``,
under an advisory lock so that two writers cannot lose each other's split. A crash,
SIGKILL or Ctrl-C at any moment leaves the old store or the complete new one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nnkcli import __version__
from nnkcli.errors import InputError, StoreError
from nnkcli.storage.atomic import (
    atomic_output,
    check_can_create,
    check_free_space,
    file_lock,
    real_path,
    remove_dead_temps,
)
from nnkcli.storage.attrs import to_attr
from nnkcli.storage.checks import (
    ContentTally,
    as_row_source,
    check_feature_array,
    check_ids,
    check_split_name,
    default_chunk_rows,
    to_stored,
)
from nnkcli.storage.hdf5 import STR_DTYPE, chunk_rows, h5_for_writing, open_h5, reserve
from nnkcli.storage.labels import class_counts, map_labels
from nnkcli.storage.store_reader import FORMAT_NAME, FORMAT_VERSION, FeatureStore, Split

#: split attributes that nnkcli sets itself; callers (and ``--meta``) cannot set them
RESERVED_ATTRS = frozenset({"source", "created_at", "nnkcli_version", "content_sha256"})


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
        with atomic_output(path, what="store") as tmp, h5_for_writing(tmp) as dst:
            reserve(tmp, need)
            if state.exists:
                with open_h5(path, "r") as src:
                    for key, value in list(src.attrs.items()):
                        dst.attrs[key] = value
                    for name in state.dims:
                        if name != split:
                            src.copy(src[name], dst, name=name)
                            dst.flush()
            dst.attrs["nnk_format"] = FORMAT_NAME
            dst.attrs["format_version"] = FORMAT_VERSION
            if mapping.classes:
                dst.create_dataset("classes", data=np.array(mapping.classes, dtype=object), dtype=STR_DTYPE)
            digest = _write_group(
                dst.create_group(split),
                features,
                mapping.ids,
                ids,
                n,
                d,
                stored_dtype,
                step,
                progress,
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
        "features", shape=(n, d), dtype=stored_dtype, chunks=(chunk_rows(n, d, stored_dtype.itemsize), d)
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
            hasher.update(block.data)  # contiguous: hashed in place, no copy
            if flush is not None:
                flush()  # a full disk is reported now, as an exception (see storage.hdf5.discard_h5)
        if progress is not None:
            progress(stop - start)
    tally.raise_if_bad()
    labels_le = np.ascontiguousarray(labels, dtype="<i8")
    group.create_dataset("labels", data=labels_le, chunks=True if n > 0 else None)
    hasher.update(labels_le.tobytes())
    if ids is not None:
        group.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR_DTYPE)
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

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    >>> summary = write_split("feats.h5", "train", x, ["cat", "dog", "cat", "dog", "eel", "eel"], source="example")
    >>> summary["n"], summary["dim"], summary["store_classes"], summary["new_classes"]
    (6, 4, 3, ['cat', 'dog', 'eel'])
    >>> with FeatureStore("feats.h5") as store:
    ...     store.split("train").labels.tolist()
    [0, 1, 0, 1, 2, 2]
    """
    return commit_split(
        store_path,
        split,
        features,
        labels,
        class_names=class_names,
        ids=ids,
        source=source,
        attrs=attrs,
        overwrite=overwrite,
        chunk_rows=chunk_rows,
        progress=progress,
        lock_timeout=lock_timeout,
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


# The streaming writer, ``SplitWriter``, is in ``storage.split_writer``, which builds on this module
# (re-exporting it here would make an import circle).
__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RESERVED_ATTRS",
    "FeatureStore",
    "Split",
    "check_attrs",
    "check_writable",
    "commit_split",
    "remove_dead_temps",
    "write_split",
]
