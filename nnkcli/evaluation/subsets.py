"""Train subsets of a few-shot evaluation: seeded class-balanced draws, and subsets read from a file.

- :func:`balanced_draw` — ``n`` rows of every class of the train split, drawn by a generator
  seeded with ``(seed, n, try)`` only: the same rows for the same store whatever the thread
  count, the chunk size or the other draws of the run. A class with fewer than ``n`` labelled
  rows gives all of them (as DINOv2's ``eval/knn.py`` does); the caller says so.
- :func:`read_subset_file` — one entry a line (SimCLR's ``imagenet_subsets/1percent.txt``): a
  sample id of the split or a row index, resolved by :func:`match_entries`.

Rows are returned sorted and distinct: the subset is searched in train-row order, so ties in
similarity are broken by train row id exactly as ``classify`` breaks them over the whole split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from nnkcli.errors import InputError

#: unknown entries named in the error message of a subset file
SHOWN_UNKNOWN = 5


def draw_seed(seed: int, per_class: int, try_index: int) -> list[int]:
    """The entropy of one draw's generator, ``[seed, per_class, try_index]`` (``numpy.random.SeedSequence``)."""
    return [int(seed), int(per_class), int(try_index)]


def balanced_draw(labels: np.ndarray, per_class: int, seed: int, try_index: int) -> np.ndarray:
    """Sorted train rows: ``per_class`` labelled rows of each class, uniformly without replacement.

    Parameters
    ----------
    labels : (n,) int64 class ids of the train split, -1 = unlabelled (never drawn)
    per_class : int >= 1
    seed, try_index : int >= 0

    Every labelled row gets a uniform key from ``default_rng(draw_seed(seed, per_class, try_index))``,
    in row order; each class keeps its ``per_class`` rows of smallest key (all of them when it has
    fewer). The draw depends on the labels and those three numbers only.
    """
    labels = np.asarray(labels, dtype=np.int64)
    labelled = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(draw_seed(seed, per_class, try_index))
    keys = rng.random(labelled.size)
    y = labels[labelled]
    order = np.lexsort((keys, y))  # by class, then key
    by_class = y[order]
    rank = np.arange(by_class.size) - np.searchsorted(by_class, by_class, side="left")
    return np.sort(labelled[order[rank < per_class]]).astype(np.int64)


def short_classes(labels: np.ndarray, per_class: int, class_names: Sequence[str]) -> dict[str, int]:
    """The classes with fewer than ``per_class`` (but some) labelled train rows: name -> rows available."""
    counts = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0], minlength=len(class_names))
    return {class_names[int(c)]: int(counts[c]) for c in np.flatnonzero((counts > 0) & (counts < per_class))}


def read_subset_file(path: str | os.PathLike) -> list[str]:
    """The entries of a subset file: one a line, stripped; blank lines and lines starting with ``#`` skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"subset file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"subset file {path} is not UTF-8 text: {exc.reason}") from None
    entries = [line.strip() for line in lines]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise InputError(f"subset file {path} names no train row", hint="one train row index or sample id a line")
    return entries


def _base_name(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def match_entries(entries: Sequence[str], n_rows: int, ids: Sequence[str] | None, *, source: str) -> np.ndarray:
    """The train rows (in entry order, repeats kept) that ``entries`` name.

    Each entry is matched, in this order, to: a sample id of the split, exactly; a sample id
    whose base name (after the last ``/``) is the entry's base name (SimCLR's files name
    ``n01440764_10026.JPEG`` where a store's id may be ``train/n01440764/n01440764_10026.JPEG``);
    a row index ``0 .. n_rows - 1`` written as a plain integer. A base name that two ids share
    is an error, as is any entry that matches nothing (the first few are named).
    """
    exact: dict[str, int] = {}
    by_base: dict[str, int] = {}
    ambiguous: set[str] = set()
    if ids is not None:
        for at, name in enumerate(ids):
            exact.setdefault(name, at)
            base = _base_name(name)
            if base in by_base and by_base[base] != at:
                ambiguous.add(base)
            by_base.setdefault(base, at)
    rows = np.empty(len(entries), dtype=np.int64)
    unknown: list[str] = []
    for i, entry in enumerate(entries):
        row: int | None = exact.get(entry)
        if row is None:
            base = _base_name(entry)
            if base in ambiguous:
                raise InputError(
                    f"{source}: entry {entry!r} matches several sample ids by base name",
                    hint="write the full sample id on that line",
                )
            row = by_base.get(base)
        if row is None and entry.isdigit() and int(entry) < n_rows:
            row = int(entry)
        if row is None:
            unknown.append(entry)
            row = -1
        rows[i] = row
    if unknown:
        shown = ", ".join(repr(e) for e in unknown[:SHOWN_UNKNOWN])
        more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
        what = "a sample id or a row index" if ids is not None else "a row index (the split has no sample ids)"
        raise InputError(
            f"{source}: {len(unknown)} of {len(entries)} entries name no train row: {shown}{more}",
            hint=f"each line must be {what} of the train split (0 .. {n_rows - 1} for a row index)",
        )
    return rows
