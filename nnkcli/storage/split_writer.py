"""Streaming, optionally resumable, writer of one split (used by model extraction).

Rows are appended to a staging folder beside the store, made of plain append-only
files (``features.bin``, ``labels.bin``, ``ids.jsonl``, ``params.json``). Appending to a
flat file is crash-safe by construction: after a kill, the number of complete rows is
the smallest whole count over the files, and anything past it is cut off. HDF5 files
are not like that (a kill in the middle of a write can leave one unreadable), which is
why the staging area is not an HDF5 file.

The split becomes visible in the store only at commit, through the same atomic
replace as :func:`nnkcli.storage.store.write_split`. With ``resumable=True`` the staging
folder has a fixed name (``.<store>.<split>.partial``) and survives a crash, so a
rerun continues where the last one stopped; otherwise it is temporary and deleted on
any error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnkcli.errors import InputError, StoreError
from nnkcli.storage.atomic import atomic_write_text, discard_temp, temp_path_for
from nnkcli.storage.checks import (
    STORED_DTYPES,
    ContentTally,
    as_row_source,
    check_split_name,
    tensor_to_numpy,
    to_stored,
)

logger = logging.getLogger("nnkcli")

_PARTIAL_SUFFIX = ".partial"
_PARAMS_VERSION = 1


def partial_path(store_path: str | os.PathLike, split: str) -> Path:
    """Where an interrupted resumable extraction of ``split`` keeps its rows."""
    store_path = Path(store_path)
    return store_path.with_name(f".{store_path.name}.{split}{_PARTIAL_SUFFIX}")


class SplitWriter:
    """Write one split row block by row block; commit atomically on a clean exit.

    Parameters
    ----------
    store_path : path-like
        The store (created when missing).
    split : str
        Split name.
    dim : int
        Feature dimension d; every appended block must be (m, d).
    class_names : sequence of str, optional
        Class names; appended labels are ids into it (``-1`` = unlabelled). Without
        it, labels are raw integers mapped to contiguous ids at commit.
    source : str
        Provenance: the model / checkpoint the features come from.
    attrs : dict, optional
        More provenance pairs (``checkpoint_sha256``, preprocessing, ``--meta`` pairs).
    overwrite : bool, default=False
        Replace an existing split.
    dtype : {"float32", "float16"}, default="float32"
        Stored dtype.
    expected_rows : int, optional
        The number of rows the caller will write (recorded so a resumed run with a
        different dataset is refused).
    resumable : bool, default=False
        Keep rows in ``.<store>.<split>.partial`` across crashes; a rerun with the same
        parameters continues after ``n_written`` rows.
    lock_timeout : float, optional
        Seconds to wait for another writer of the store at commit (None: wait).

    Attributes
    ----------
    n_written : int
        Rows already written (with ``resumable``, including those of the interrupted run:
        the caller skips that many samples).
    summary : dict or None
        ``write_split``'s summary, after a successful commit.

    Examples
    --------
    >>> with SplitWriter("feats.h5", "train", dim=768, class_names=names,  # doctest: +SKIP
    ...                  source="torchvision:vit_b_16", resumable=True) as writer:
    ...     for images, labels in batches(skip=writer.n_written):
    ...         writer.append(model(images), labels)
    """

    def __init__(
        self,
        store_path,
        split,
        *,
        dim,
        class_names=None,
        source,
        attrs=None,
        overwrite=False,
        dtype="float32",
        expected_rows=None,
        resumable=False,
        lock_timeout=None,
    ):
        from nnkcli.storage.store import check_attrs, check_writable, remove_dead_temps

        self.store_path = Path(store_path)
        self.split = check_split_name(split)
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InputError(f"dim must be a positive integer; got {dim!r}")
        if dtype not in STORED_DTYPES:
            raise InputError(f"dtype must be float32 or float16; got {dtype!r}")
        if not isinstance(source, str) or not source:
            raise InputError("source must be a non-empty string describing where the features came from")
        self.dim = int(dim)
        self.dtype = STORED_DTYPES[dtype]
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.source = source
        self.attrs = check_attrs(attrs)
        self.overwrite = overwrite
        self.expected_rows = expected_rows
        self.resumable = resumable
        self.lock_timeout = lock_timeout
        self.summary: dict | None = None
        self._tally = ContentTally()
        self._files: dict[str, BinaryIO] = {}
        self._has_ids: bool | None = None
        self._closed = False
        # fail before the caller spends hours extracting
        check_writable(self.store_path, self.split, self.dim, overwrite)
        self._params = {
            "params_version": _PARAMS_VERSION,
            "split": self.split,
            "dim": self.dim,
            "dtype": dtype,
            "class_names": self.class_names,
            "source": source,
            "attrs": self.attrs,
            "expected_rows": expected_rows,
        }
        if resumable:
            self.staging = partial_path(self.store_path, self.split)
            self.n_written = self._open_partial()
        else:
            stale = partial_path(self.store_path, self.split)
            if stale.exists():
                logger.info(
                    "an interrupted extraction of split '%s' is kept in %s; rerun with --resume "
                    "to continue it (it is deleted when this run completes)",
                    self.split,
                    stale,
                )
            staging_base = self.store_path.with_name(f"{self.store_path.name}.{self.split}")
            remove_dead_temps(staging_base)
            self.staging = temp_path_for(staging_base)
            self.staging.mkdir()
            atomic_write_text(self.staging / "params.json", json.dumps(self._params, sort_keys=True))
            self.n_written = 0
        self._open_files()

    # -- staging files --------------------------------------------------------------------
    def _open_partial(self) -> int:
        params_file = self.staging / "params.json"
        if self.staging.exists():
            try:
                old = json.loads(params_file.read_text("utf-8"))
            except (OSError, ValueError):
                logger.warning("the partial extraction in %s is unreadable; starting over", self.staging)
                shutil.rmtree(self.staging, ignore_errors=True)
            else:
                self._refuse_different(old)
                return self._truncate_to_complete_rows()
        self.staging.mkdir()
        atomic_write_text(params_file, json.dumps(self._params, sort_keys=True))
        return 0

    def _refuse_different(self, old: dict) -> None:
        for key, new_value in self._params.items():
            if old.get(key) != new_value:
                raise StoreError(
                    f"the interrupted extraction in {self.staging} was made with a different {key} "
                    f"({_short(old.get(key))} vs now {_short(new_value)})",
                    hint=f"drop --resume to start over, or delete {self.staging}",
                )

    def _truncate_to_complete_rows(self) -> int:
        row_bytes = self.dim * self.dtype.itemsize
        feats, labels, ids = (self.staging / name for name in ("features.bin", "labels.bin", "ids.jsonl"))
        n = min(_size(feats) // row_bytes, _size(labels) // 8)
        line_ends = None
        if ids.exists():
            line_ends = np.flatnonzero(np.fromfile(ids, dtype=np.uint8) == 0x0A) + 1
            n = min(n, len(line_ends))
        for path, size in ((feats, n * row_bytes), (labels, n * 8)):
            if path.exists():
                os.truncate(path, size)
        if line_ends is not None:
            os.truncate(ids, int(line_ends[n - 1]) if n else 0)
        if n:
            logger.info("resuming split '%s' after %d rows already extracted", self.split, n)
        return n

    def _open_files(self) -> None:
        self._files["features"] = open(self.staging / "features.bin", "ab")
        self._files["labels"] = open(self.staging / "labels.bin", "ab")
        if (self.staging / "ids.jsonl").exists():
            self._has_ids = True
            self._files["ids"] = open(self.staging / "ids.jsonl", "ab")
        elif self.n_written:
            self._has_ids = False

    def _close_files(self) -> None:
        for handle in self._files.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._files = {}

    # -- the API --------------------------------------------------------------------------
    def append(self, features, labels=None, ids=None) -> None:
        """Append a block of rows.

        Parameters
        ----------
        features : array-like, shape (m, dim)
            numpy array or torch tensor; cast to the stored dtype.
        labels : array-like of int, shape (m,), optional
            Ids into ``class_names`` (or raw integers without it); ``-1`` = unlabelled.
            None: all unlabelled.
        ids : sequence of str, length m, optional
            Sample ids; give them for every block or for none.

        Raises
        ------
        InputError
            Wrong shape, a bad dtype, NaN/Inf or all-zero rows (reported with their
            row number in the split), labels out of range, ids given inconsistently.
        """
        if self._closed:
            raise StoreError(f"the writer of split '{self.split}' is already closed")
        block = as_row_source(features)
        if np.dtype(block.dtype).kind not in "biuf" or len(block.shape) != 2 or block.shape[1] != self.dim:
            raise InputError(
                f"appended features must be a real (m, {self.dim}) array; got {np.dtype(block.dtype)} "
                f"of shape {tuple(block.shape)}",
            )
        block = to_stored(np.asarray(block), self.dtype)
        m = block.shape[0]
        if m == 0:
            return
        label_ids = self._check_labels(labels, m)
        if ids is not None:
            if hasattr(ids, "tolist"):
                ids = ids.tolist()
            ids = [str(i) for i in ids]
            if len(ids) != m:
                raise InputError(f"appended {m} feature rows but {len(ids)} ids")
        if self._has_ids is None:
            self._has_ids = ids is not None
            if self._has_ids:
                self._files["ids"] = open(self.staging / "ids.jsonl", "ab")
        elif self._has_ids != (ids is not None):
            raise InputError("give ids with every appended block or with none")
        if not self._tally.update(block, self.n_written):
            self._tally.raise_if_bad()

        # features first, then labels, then ids: a kill in between leaves the shortest
        # file as the count of complete rows
        self._files["features"].write(block.tobytes())
        self._files["labels"].write(label_ids.tobytes())
        if ids is not None:
            self._files["ids"].write("".join(json.dumps(i) + "\n" for i in ids).encode("utf-8"))
        for handle in self._files.values():
            handle.flush()
        self.n_written += m

    def _check_labels(self, labels, m: int) -> np.ndarray:
        if labels is None:
            return np.full(m, -1, dtype="<i8")
        labels = tensor_to_numpy(labels)
        arr = np.asarray(labels).reshape(-1)
        if arr.shape[0] != m or arr.dtype.kind not in "iu":
            raise InputError(f"appended labels must be {m} integers; got {arr.dtype} of shape {np.shape(labels)}")
        upper = len(self.class_names) if self.class_names is not None else np.iinfo(np.int64).max
        bad = (arr < -1) | (arr >= upper)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"label {int(arr[first])} at row {self.n_written + first} is outside the "
                f"{len(self.class_names or [])} class names",
                hint="labels are ids into class_names (0..C-1), or -1 for unlabelled",
            )
        return np.ascontiguousarray(arr, dtype="<i8")

    def written_ids(self) -> list[str] | None:
        """Ids of the rows written so far (None when the rows have no ids)."""
        path = self.staging / "ids.jsonl"
        if not path.exists():
            return None
        if "ids" in self._files:
            self._files["ids"].flush()
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()[: self.n_written]]

    def commit(self) -> dict:
        """Move the written rows into the store atomically; returns the summary."""
        from nnkcli.storage.store import commit_split

        if self._closed:
            raise StoreError(f"the writer of split '{self.split}' is already closed")
        self._close_files()
        n = self.n_written
        if n == 0:
            raise InputError(f"no rows were written to split '{self.split}'", hint="there is nothing to store")
        self._tally.raise_if_bad()
        features = np.memmap(self.staging / "features.bin", dtype=self.dtype, mode="r", shape=(n, self.dim))
        labels = np.fromfile(self.staging / "labels.bin", dtype="<i8", count=n)
        ids = self.written_ids() if self._has_ids else None
        try:
            summary = commit_split(
                self.store_path,
                self.split,
                features,
                labels,
                class_names=self.class_names,
                ids=ids,
                source=self.source,
                attrs=self.attrs,
                overwrite=self.overwrite,
                checked=(n, self.dim, self.dtype),
                lock_timeout=self.lock_timeout,
            )
        finally:
            del features
        self._closed = True
        discard_temp(self.staging)
        if not self.resumable:
            shutil.rmtree(partial_path(self.store_path, self.split), ignore_errors=True)
        self.summary = summary
        return summary

    def abort(self) -> None:
        """Stop without committing: a resumable partial is kept, a temporary one deleted."""
        self._close_files()
        if not self._closed and not self.resumable:
            discard_temp(self.staging)
        self._closed = True

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    def __del__(self):  # pragma: no cover - a writer dropped without exit
        if getattr(self, "_files", None):
            self._close_files()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
