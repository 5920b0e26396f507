"""Importing safetensors files: a ``features`` tensor (n, d) and an optional ``labels`` tensor (n,).

Rows are read block by block through ``safetensors.safe_open(...).get_slice`` (this is the
only module that imports safetensors), so a large file is never loaded whole. bfloat16
tensors are refused (numpy has no bfloat16): save them as float16 or float32.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.extract.common import ImportedFeatures

logger = logging.getLogger("nnkcli")

_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}


def _safe_open(path: Path):
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise MissingDependencyError("reading safetensors files", "safetensors") from None
    try:
        return safe_open(str(path), framework="np")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"{path} is not a valid safetensors file (or it is truncated)", hint=f"safetensors could not read it: {exc}"
        ) from None


def _dtype(path: Path, key: str, code: str) -> np.dtype:
    if code not in _DTYPES:
        raise InputError(
            f"tensor '{key}' in {path} has dtype {code}, which numpy cannot hold",
            hint="save it as float16 or float32 (e.g. tensor.float())",
        )
    return np.dtype(_DTYPES[code])


class SafetensorRows:
    """One tensor of a safetensors file, read by row slices."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("row sources support contiguous row slices only")
        start, stop, _ = index.indices(len(self))
        with _safe_open(self.path) as f:
            return np.asarray(f.get_slice(self.key)[start:stop])

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)


def load_safetensors(
    path: str | os.PathLike,
    *,
    features_key: str | None = None,
    labels_key: str | None = None,
    labels_given: bool = False,
) -> ImportedFeatures:
    """Features (and labels) from a ``.safetensors`` file."""
    path = Path(path)
    features_key = features_key or "features"
    with _safe_open(path) as f:
        keys = list(f.keys())
        if features_key not in keys:
            raise InputError(
                f"{path} has no tensor '{features_key}' (it holds: {', '.join(keys) or 'nothing'})",
                hint="name the tensor with --features-key",
            )
        info = f.get_slice(features_key)
        shape = tuple(int(s) for s in info.get_shape())
        features = SafetensorRows(path, features_key, shape, _dtype(path, features_key, info.get_dtype()))
        labels = None
        if not labels_given:
            key = labels_key or "labels"
            if key in keys:
                info = f.get_slice(key)
                _dtype(path, key, info.get_dtype())
                labels = np.asarray(f.get_tensor(key))
            elif labels_key is not None:
                raise InputError(
                    f"{path} has no tensor '{key}' (it holds: {', '.join(keys)})",
                    hint="name the tensor with --labels-key",
                )
            else:
                logger.warning("%s has no 'labels' tensor; the split is stored unlabelled", path.name)
    return ImportedFeatures(
        features=features,
        labels=labels,
        source=f"safetensors:{path.resolve()}",
        attrs={"source_format": "safetensors"},
    )
