"""Mapping raw labels (any integers or strings) to contiguous class ids.

A store keeps labels as ``int64`` ids ``0..C-1`` (``-1`` = unlabelled) and the class
names in one list shared by all splits. Importers hand over whatever the source had:
ImageNet-style integers with gaps, ``-1`` for unlabelled rows, or class-name strings.
Two peer-tool bugs are avoided on purpose: integer labels are never taken as
"``max + 1`` classes" (labels ``{0, 7, 999}`` give 3 classes, not 1000), and ``-1`` is
never used as an index.

Class names are reconciled by *name* with the classes a store already holds: a name
already there keeps its id, new names are appended, so ids written earlier stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.checks import tensor_to_numpy

logger = logging.getLogger("nnkcli")

UNLABELLED = -1


@dataclass
class LabelMapping:
    """Result of :func:`map_labels`.

    Attributes
    ----------
    ids : np.ndarray of int64, shape (n,)
        Class ids into ``classes``; ``-1`` marks unlabelled rows.
    classes : list of str
        The full class list after the mapping (the store's existing classes first).
    new_classes : list of str
        Names that were not in the existing class list and were appended.
    """

    ids: np.ndarray
    classes: list[str]
    new_classes: list[str] = field(default_factory=list)


def _as_label_array(labels, n_expected: int | None) -> np.ndarray:
    """Turn a list/array/tensor of labels into a 1-D numpy array, checking its shape."""
    arr = np.asarray(tensor_to_numpy(labels))
    if arr.ndim == 2 and 1 in arr.shape:
        # (n, 1) columns are common (VISSL targets, sklearn-style y)
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(
            f"labels must be a 1-D array (n,); got a {arr.ndim}-D array of shape {tuple(arr.shape)}",
            hint="pass one label per feature row",
        )
    if n_expected is not None and arr.shape[0] != n_expected:
        raise InputError(
            f"features have {n_expected} rows but labels have {arr.shape[0]}",
            hint="features and labels must describe the same samples, in the same order",
        )
    return arr


def _integer_labels(arr: np.ndarray) -> np.ndarray | None:
    """``arr`` as int64 if it holds integers (integer-valued floats included), else None."""
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise InputError(
                f"labels contain NaN or Inf (first at row {bad})",
                hint="use -1 for unlabelled rows",
            )
        if np.any(arr != np.round(arr)):
            bad = int(np.flatnonzero(arr != np.round(arr))[0])
            raise InputError(
                f"labels must be integers or strings; got the non-integer value {arr[bad].item()!r} at row {bad}",
                hint="class labels are ids or names, not continuous values",
            )
        return arr.astype(np.int64)
    return None


def _string_labels(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8").astype(object)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    if arr.dtype.kind == "O":
        out = np.empty(arr.shape[0], dtype=object)
        for i, value in enumerate(arr):
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                value = str(int(value))
            elif not isinstance(value, str):
                raise InputError(
                    f"labels must be integers or strings; got {type(value).__name__} {value!r} at row {i}",
                    hint="class labels are ids or names",
                )
            out[i] = value
        return out
    raise InputError(
        f"labels have unsupported dtype {arr.dtype}; expected integers or strings",
        hint="class labels are ids or names",
    )


def _sort_key(name: str):
    # numeric names in numeric order ("2" before "10"), then the rest alphabetically
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


def map_labels(
    labels,
    *,
    n: int | None = None,
    class_names: Sequence[str] | None = None,
    existing_classes: Sequence[str] | None = None,
) -> LabelMapping:
    """Map raw labels to contiguous class ids, reconciled with a store's classes.

    Parameters
    ----------
    labels : array-like of shape (n,) or None
        Integers (any values; ``-1`` = unlabelled), integer-valued floats, or strings
        (``""`` or ``"-1"`` = unlabelled). ``(n, 1)`` columns are accepted. ``None``: all unlabelled.
    n : int, optional
        The number of feature rows; a different label count is refused.
    class_names : sequence of str, optional
        Names of the source's classes. With integer labels, the labels index into it
        (``0..len-1``, or ``-1``). With string labels, every label must be one of them
        and their order fixes the order of new classes.
    existing_classes : sequence of str, optional
        The store's class list; names found there keep their ids.

    Returns
    -------
    LabelMapping
        ``ids`` (int64, shape (n,)), the updated class list and the names appended.

    Raises
    ------
    InputError
        Wrong shape or count, NaN/non-integer floats, negative integers other than -1,
        ids outside ``class_names``, unknown names, or duplicate class names.
    """
    existing = [str(c) for c in existing_classes] if existing_classes is not None else []
    _check_unique(existing, "the store's class list")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        _check_unique(class_names, "class_names")

    if labels is None:
        if n is None:
            raise InputError("map_labels needs n when labels is None")
        return LabelMapping(np.full(n, UNLABELLED, dtype=np.int64), existing, [])

    arr = _as_label_array(labels, n)
    ints = _integer_labels(arr)
    if ints is not None:
        source_names, local = _from_integers(ints, class_names)
    else:
        source_names, local = _from_strings(_string_labels(arr), class_names)

    # reconcile with the existing class list by name
    classes = list(existing)
    position = {name: i for i, name in enumerate(classes)}
    new_classes = []
    for name in source_names:
        if name not in position:
            position[name] = len(classes)
            classes.append(name)
            new_classes.append(name)
    lookup = np.array([position[name] for name in source_names] + [UNLABELLED], dtype=np.int64)
    # local == -1 indexes the trailing UNLABELLED entry
    ids = lookup[local]
    if existing and new_classes and len(new_classes) == len(source_names) and len(source_names) > 0:
        logger.warning(
            "none of the %d label names (%s) match the store's classes (%s); they were added as new classes",
            len(source_names),
            _preview(source_names),
            _preview(existing),
        )
    return LabelMapping(ids, classes, new_classes)


def _from_integers(ints: np.ndarray, class_names: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Source class names and local ids (-1 = unlabelled) from integer labels."""
    negative = ints < UNLABELLED
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise InputError(
            f"labels contain the negative value {int(ints[first])} at row {first}; only -1 (unlabelled) is allowed",
            hint="use -1 for unlabelled rows and non-negative integers or names for classes",
        )
    labelled = ints != UNLABELLED
    if class_names is not None:
        too_big = labelled & (ints >= len(class_names))
        if too_big.any():
            first = int(np.flatnonzero(too_big)[0])
            raise InputError(
                f"label {int(ints[first])} at row {first} is outside the {len(class_names)} class names",
                hint="integer labels index into the class names (0..C-1, or -1 for unlabelled)",
            )
        return list(class_names), ints.copy()
    values, inverse = np.unique(ints[labelled], return_inverse=True)
    local = np.full(ints.shape[0], UNLABELLED, dtype=np.int64)
    local[labelled] = inverse
    return [str(int(v)) for v in values], local


def _from_strings(names: np.ndarray, class_names: list[str] | None) -> tuple[list[str], np.ndarray]:
    labelled = (names != "") & (names != "-1")
    present = sorted(set(names[labelled].tolist()), key=_sort_key)
    if class_names is not None:
        unknown = [name for name in present if name not in set(class_names)]
        if unknown:
            raise InputError(
                f"label {unknown[0]!r} is not one of the {len(class_names)} class names",
                hint="every string label must be one of the given class names",
            )
        source_names = list(class_names)
    else:
        source_names = present
    position = {name: i for i, name in enumerate(source_names)}
    local = np.full(names.shape[0], UNLABELLED, dtype=np.int64)
    if labelled.any():
        local[labelled] = np.array([position[name] for name in names[labelled]], dtype=np.int64)
    return source_names, local


def _check_unique(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise InputError(f"{what} contains the class name {name!r} twice", hint="class names must be unique")
        seen.add(name)


def _preview(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def class_counts(ids: np.ndarray, n_classes: int) -> tuple[np.ndarray, int]:
    """Per-class counts (int64, shape (n_classes,)) and the number of unlabelled rows."""
    ids = np.asarray(ids, dtype=np.int64)
    labelled = ids >= 0
    counts = np.bincount(ids[labelled], minlength=n_classes)[: max(n_classes, 0)]
    return counts.astype(np.int64), int((~labelled).sum())
