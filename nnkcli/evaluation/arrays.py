"""Arrays held in memory read as store splits: the checks and conversions of ``Evaluation.from_arrays``.

Features may be numpy arrays, array-likes or torch tensors (converted once, on the CPU,
without importing torch here); labels integer class ids (``-1`` = unlabelled) or strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.checks import tensor_to_numpy


def to_numpy(values, what: str) -> np.ndarray:
    """A numpy array from an array-like or a torch tensor (moved to the CPU once, no torch import)."""
    try:
        return np.asarray(tensor_to_numpy(values))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} cannot be read as an array: {exc}") from None


class ArraySplit:
    """An in-memory split: what the evaluation reads of a store split.

    Parameters
    ----------
    name : str
    features : ndarray, shape (n, d), real
    labels : ndarray, shape (n,), int64 class ids (-1 = unlabelled)
    """

    def __init__(self, name: str, features: np.ndarray, labels: np.ndarray):
        self.name = name
        self.features = features
        self.labels = labels
        self.n, self.dim = int(features.shape[0]), int(features.shape[1])
        # nothing persists an in-memory index, so nothing needs a content hash of it
        self.content_sha256 = "in-memory"
        self.ids = None  # sample ids: none for arrays

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.features[start:stop]

    def iter_chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = max(1, int(chunk_rows or self.n or 1))
        for start in range(0, self.n, step):
            yield start, self.features[start : start + step]


def unit_rows(x: np.ndarray, *, keep_zero_rows: bool = False) -> np.ndarray:
    """Rows L2-normalised in float32 (a new array), exactly as the store path normalises them.

    ``keep_zero_rows``: an all-zero row stays zero (cosine similarity 0 to every row, the
    convention of scikit-learn's cosine metric) instead of being an error.
    """
    from nnkcli.numerics.kernels import normalize_rows

    if not keep_zero_rows:
        return normalize_rows(x)
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 0
    x[nonzero] /= norms[nonzero, None]
    return x


def check_features(values, what: str) -> np.ndarray:
    """(n, d) finite real features as an array (float16/32/64 kept, integers become float32)."""
    x = to_numpy(values, what)
    if x.dtype.kind not in "biuf":
        raise InputError(
            f"{what} have the unsupported dtype {x.dtype}; expected real numbers",
            hint="convert them to a float array first",
        )
    if x.ndim != 2:
        raise InputError(
            f"{what} must be a 2-D array (n, d); got shape {x.shape}", hint="reshape to (n_samples, feature_dim)"
        )
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if x.shape[0] and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InputError(f"{what} contain NaN or Inf (first: row {row})", hint="fix or drop those rows")
    return x


def encode_labels(train_labels, query_labels, class_names: Sequence[str] | None):
    """Class ids for both label arrays, and the class names.

    Integer labels are class ids already (``-1`` = unlabelled, ``class_names`` names them);
    string labels are mapped to ids in sorted order of the names found in either array
    (or in the order of ``class_names`` when given).

    Returns
    -------
    train_ids, query_ids : ndarray of int64 (query_ids is None when query_labels is)
    class_names : list of str
    """
    arrays = [to_numpy(train_labels, "train labels")]
    if query_labels is not None:
        arrays.append(to_numpy(query_labels, "query labels"))
    for name, a in zip(("train labels", "query labels"), arrays, strict=False):
        if a.ndim != 1:
            raise InputError(f"{name} must be 1-D, got shape {a.shape}")
    if all(a.dtype.kind in "iub" for a in arrays):
        ids = [a.astype(np.int64) for a in arrays]
        bad = [int(a.min()) for a in ids if a.size and a.min() < -1]
        if bad:
            raise InputError(f"labels must be class ids >= 0 (or -1 = unlabelled), got {bad[0]}")
        top = max([int(a.max(initial=-1)) for a in ids])
        names = list(class_names) if class_names is not None else [str(c) for c in range(top + 1)]
        if top >= len(names):
            raise InputError(
                f"label {top} has no name: class_names holds {len(names)} names", hint="give one name per class id"
            )
    elif all(a.dtype.kind in "US" for a in arrays):
        strings = [a.astype(str) for a in arrays]
        names = list(class_names) if class_names is not None else sorted(set().union(*map(set, strings)))
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted(set().union(*map(set, strings)) - lookup.keys())
        if unknown:
            raise InputError(f"label {unknown[0]!r} is not in class_names", hint="give every class a name")
        ids = [np.array([lookup[s] for s in a], dtype=np.int64) for a in strings]
    else:
        raise InputError(
            "labels must be integers (class ids) or strings, the same kind for train and query",
            hint=f"got dtypes {', '.join(str(a.dtype) for a in arrays)}",
        )
    return ids[0], (ids[1] if query_labels is not None else None), names
