"""Validation of feature arrays before anything is stored (pure numpy).

Checks come in two kinds: cheap ones on an array's shape and dtype, done before any
data is read, and per-chunk content checks (NaN/Inf, all-zero rows) done while the
data streams through, so a 10 GB memory-mapped input is read once.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from nnkcli.errors import InputError

# features are stored as little-endian float32, or float16 when they come as float16
STORED_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def is_tensor(values) -> bool:
    """Whether ``values`` is a torch tensor, recognised without importing torch."""
    return hasattr(values, "detach") and hasattr(values, "cpu") and hasattr(values, "numpy")


def tensor_to_numpy(values):
    """A torch tensor as a numpy array on the CPU (bfloat16 becomes float32); anything else unchanged."""
    if not is_tensor(values):
        return values
    tensor = values.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def check_split_name(name: str) -> str:
    """Refuse split names that are not plain words (they become HDF5 group names)."""
    if not isinstance(name, str) or not _SPLIT_NAME.match(name) or name == "classes" or len(name) > 100:
        raise InputError(
            f"invalid split name {name!r}",
            hint="use letters, digits, '_', '-' or '.', e.g. train or val",
        )
    return name


def as_row_source(features):
    """Return ``features`` as something with ``shape``, ``dtype`` and row slicing.

    numpy arrays, memmaps, h5py datasets and lazy row views pass through untouched (so
    nothing is loaded); torch tensors become numpy arrays; anything else goes through
    ``np.asarray``.
    """
    if is_tensor(features):
        return tensor_to_numpy(features)
    if hasattr(features, "shape") and hasattr(features, "dtype") and hasattr(features, "__getitem__"):
        return features
    try:
        return np.asarray(features)
    except (TypeError, ValueError) as exc:
        raise InputError(f"features cannot be read as an array: {exc}", hint="pass a 2-D numeric array") from exc


def check_feature_array(features) -> tuple[int, int, np.dtype]:
    """Check shape and dtype without reading the data.

    Parameters
    ----------
    features : array-like with ``shape`` and ``dtype``
        Expected shape (n, d) with n, d > 0 and a real numeric dtype.

    Returns
    -------
    n, d : int
    stored_dtype : np.dtype
        ``<f2`` for float16 input, ``<f4`` otherwise.
    """
    shape = tuple(int(s) for s in features.shape)
    dtype = np.dtype(features.dtype)
    if dtype.kind == "c":
        raise InputError(
            f"features have the complex dtype {dtype}; expected real numbers",
            hint="store real-valued features (e.g. take the magnitude or the real part first)",
        )
    if dtype.kind not in "biuf":
        raise InputError(
            f"features have the unsupported dtype {dtype}; expected real numbers",
            hint="convert the features to a float array first",
        )
    if len(shape) != 2:
        raise InputError(
            f"features must be a 2-D array (n, d); got a {len(shape)}-D array of shape {shape}",
            hint="reshape to (n_samples, feature_dim)",
        )
    n, d = shape
    if n == 0 or d == 0:
        raise InputError(f"features are empty (shape {shape})", hint="there is nothing to import")
    stored = STORED_DTYPES["float16"] if dtype == np.float16 else STORED_DTYPES["float32"]
    return n, d, stored


def default_chunk_rows(d: int, itemsize: int = 4, target_bytes: int = 32 * 2**20) -> int:
    """Rows per streamed block: about ``target_bytes`` of input at a time."""
    return max(1, target_bytes // max(1, d * itemsize))


def to_stored(block: np.ndarray, stored_dtype: np.dtype) -> np.ndarray:
    """Cast a block to the stored dtype (C order); values that overflow become inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(block, dtype=stored_dtype)


@dataclass
class ContentTally:
    """Counts bad rows while blocks stream through; ``raise_if_bad`` reports them."""

    nonfinite_rows: int = 0
    first_nonfinite: int = -1
    zero_rows: int = 0
    first_zero: int = -1

    @property
    def ok(self) -> bool:
        return self.nonfinite_rows == 0 and self.zero_rows == 0

    def update(self, block: np.ndarray, start: int) -> bool:
        """Check rows ``start .. start+len(block)`` (already cast); True when all are fine."""
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            if self.nonfinite_rows == 0:
                self.first_nonfinite = start + int(bad[0])
            self.nonfinite_rows += int(bad.size)
        zero = ~np.any(block != 0, axis=1) & finite
        if zero.any():
            bad = np.flatnonzero(zero)
            if self.zero_rows == 0:
                self.first_zero = start + int(bad[0])
            self.zero_rows += int(bad.size)
        return bool(finite.all() and not zero.any())

    def raise_if_bad(self) -> None:
        if self.nonfinite_rows:
            raise InputError(
                f"features contain NaN or Inf in {_rows(self.nonfinite_rows)} (first: row {self.first_nonfinite})",
                hint="fix or drop those rows; nothing was written",
            )
        if self.zero_rows:
            raise InputError(
                f"features have {self.zero_rows} all-zero {'row' if self.zero_rows == 1 else 'rows'} "
                f"(first: row {self.first_zero}); cosine similarity is undefined for them",
                hint="drop those rows or check how they were extracted; nothing was written",
            )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def check_ids(ids, n: int) -> list[str] | None:
    """Sample ids as a list of ``n`` strings (or None)."""
    if ids is None:
        return None
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids]
    if len(ids) != n:
        raise InputError(f"features have {n} rows but ids have {len(ids)}", hint="give one id per feature row")
    return ids


def sha256_file(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in blocks (checkpoints and stores are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            digest.update(block)
    return digest.hexdigest()
