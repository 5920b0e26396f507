"""Importing DINO's ``--dump_features`` output (needs the torch extra).

DINO's ``eval_knn.py --dump_features DIR`` saves four tensors with ``torch.save``:
``trainfeat.pth`` (n, d) float, ``trainlabels.pth`` (n,) int64, and the same for
``test``. Its labels are ImageFolder class indices (no names). Tensors are loaded with
``weights_only=True``: a dump holds plain tensors, and anything else in a ``.pth`` file
would be unpickled code.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.extract.common import ImportedFeatures, as_numpy

logger = logging.getLogger("nnkcli")


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("reading DINO .pth dumps", "torch") from exc
    return torch


def load_tensor(path: str | os.PathLike, what: str):
    """Load one tensor saved with ``torch.save`` (on the CPU, without unpickling code)."""
    import pickle

    from nnkcli.extract.torch_checkpoints import blocked_global

    torch = _torch()
    path = Path(path)
    try:
        try:
            # memory-mapped: rows are paged in as the store streams them, so a 625 MiB dump is
            # never held whole (torch's zip format, the default of torch.save since 1.6)
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            logger.warning(
                "%s is in torch's legacy (non-zip) format, which cannot be memory-mapped: loading it whole", path
            )
            value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = blocked_global(str(exc))
        if name is None:
            raise _not_a_tensor(path, exc) from exc
        raise InputError(
            f"{path} holds a pickled Python object ({name}), not only tensors; it was not loaded",
            hint="a DINO dump holds one tensor per file; unpickling other objects could run code",
        ) from None
    except Exception as exc:  # torch raises many types (RuntimeError, EOFError ...)
        raise _not_a_tensor(path, exc) from exc
    if not isinstance(value, torch.Tensor):
        raise InputError(
            f"{path} holds a {type(value).__name__}, not a tensor of {what}",
            hint="DINO dumps hold one tensor per file (trainfeat.pth, trainlabels.pth)",
        )
    return value


def file_rows_of(path: Path, tensor):
    """The tensor's bytes inside its ``.pth`` (a zip) read by row slices, or None when that cannot be.

    A memory-mapped tensor still fills the process's resident memory as its pages are
    read; reading row blocks from the file (as for a ``.npy``) keeps the peak at one
    block. Possible when the tensor is C-contiguous and its storage is the archive's
    only ``data/`` entry, stored uncompressed (what ``torch.save`` writes).
    """
    import zipfile

    from nnkcli.extract.common import FileRows

    if tensor.ndim != 2 or not tensor.is_contiguous():
        return None
    try:
        dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))
    except TypeError:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [info for info in archive.infolist() if re.search(r"/data/\d+$", info.filename)]
            if len(entries) != 1 or entries[0].compress_type != zipfile.ZIP_STORED:
                return None
            info = entries[0]
        with open(path, "rb") as fh:  # the data follow the entry's local header
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        offset = info.header_offset + 30 + name_len + extra_len + tensor.storage_offset() * dtype.itemsize
        if offset + tensor.numel() * dtype.itemsize > info.header_offset + 30 + name_len + extra_len + info.file_size:
            return None
        rows = FileRows(path, offset, tuple(tensor.shape), dtype.newbyteorder("<"))
        if len(rows) and not np.array_equal(rows[0:1], tensor[0:1].numpy()):
            return None  # not the layout assumed: use the mapped tensor itself
        return rows
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def _not_a_tensor(path: Path, exc: BaseException) -> InputError:
    return InputError(
        f"cannot load {path} as a tensor",
        hint=f"expected a tensor saved with torch.save; torch said: {str(exc).splitlines()[0][:200]}",
    )


def _dump_prefix(folder: Path, split: str) -> str:
    """Which DINO split (``train``/``test``) feeds the store split ``split``."""
    if (folder / f"{split}feat.pth").exists():
        return split
    available = sorted(name[: -len("feat.pth")] for name in os.listdir(folder) if name.endswith("feat.pth"))
    if split in ("val", "valid", "validation", "test", "query") and "test" in available:
        logger.info("reading testfeat.pth for split '%s'", split)
        return "test"
    raise InputError(
        f"{folder} has no DINO dump for split '{split}' (it holds: {', '.join(p + 'feat.pth' for p in available)})",
        hint="use --split train for trainfeat.pth and --split val for testfeat.pth, or give the file itself",
    )


def load_dino(path: str | os.PathLike, *, split: str, labels_given: bool = False) -> ImportedFeatures:
    """Features and labels of a DINO dump: its folder, or one ``*feat.pth`` file."""
    _torch()
    path = Path(path)
    if path.is_dir():
        prefix = _dump_prefix(path, split)
        features_file = path / f"{prefix}feat.pth"
    else:
        features_file = path
    labels_file = None
    if features_file.name.endswith("feat.pth"):
        labels_file = features_file.with_name(features_file.name[: -len("feat.pth")] + "labels.pth")

    tensor = load_tensor(features_file, "features")
    features = file_rows_of(features_file, tensor)
    if features is None:
        features = as_numpy(tensor)
    labels = None
    if not labels_given:
        if labels_file is not None and labels_file.exists():
            labels = as_numpy(load_tensor(labels_file, "labels"))
        else:
            logger.warning("no labels found beside %s; the split is stored unlabelled", features_file.name)
    attrs = {"source_format": "dino"}
    if labels is not None and labels_file is not None:  # labels are only read from labels_file
        attrs["labels_source"] = str(labels_file.resolve())
    return ImportedFeatures(
        features=features,
        labels=labels,
        source=f"dino:{features_file.resolve()}",
        attrs=attrs,
    )
