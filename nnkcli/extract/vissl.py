"""Importing a VISSL feature-extraction folder.

VISSL's ``extract_features`` engine writes, for every GPU rank (and chunk), three
arrays per split and layer::

    rank{r}_chunk{c}_{split}_{layer}_features.npy   (m, ...) features
    rank{r}_chunk{c}_{split}_{layer}_targets.npy    (m,) or (m, 1) labels
    rank{r}_chunk{c}_{split}_{layer}_inds.npy       (m,) dataset indices

Ranks interleave the dataset (a distributed sampler), and the sampler pads the last
batch by repeating samples, so shards are merged in ``inds`` order with duplicates
dropped. The shards stay on disk: rows are gathered block by block when stored.
Layer outputs of shape (m, C, H, W) are flattened to (m, C*H*W), as VISSL's own loader
does with ``flatten_features``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.extract.arrays import load_npy, open_npy
from nnkcli.extract.common import _VISSL_FILE, FileRows, ImportedFeatures
from nnkcli.storage.checks import check_feature_array

logger = logging.getLogger("nnkcli")

_SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test", "query": "test"}


class ShardedRows:
    """Rows of several on-disk shards in a given order, read lazily by slices.

    Parameters
    ----------
    shards : list of row-sliceable arrays (FileRows, np.ndarray), each (m_s, d)
    shard_of_row, row_in_shard : np.ndarray of int64, shape (n,)
        Output row ``i`` is ``shards[shard_of_row[i]][row_in_shard[i]]``.
    """

    def __init__(self, shards: list[np.ndarray], shard_of_row: np.ndarray, row_in_shard: np.ndarray):
        self.shards = shards
        self.shard_of_row = shard_of_row
        self.row_in_shard = row_in_shard
        self.dtype = np.result_type(*(s.dtype for s in shards))
        self.shape = (int(shard_of_row.shape[0]), int(shards[0].shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("ShardedRows supports row slices only")
        which = self.shard_of_row[index]
        rows = self.row_in_shard[index]
        out = np.empty((which.shape[0], self.shape[1]), dtype=self.dtype)
        for s in np.unique(which):
            mask = which == s
            local = rows[mask]
            # ranks interleave the dataset, so a block of output rows comes from a
            # contiguous stretch of each shard: read that stretch once, then pick
            lo, hi = int(local.min()), int(local.max()) + 1
            out[mask] = np.asarray(self.shards[s][lo:hi])[local - lo]
        return out


def scan_folder(folder: Path) -> dict[tuple[str, str], list[str]]:
    """``{(split, layer): [shard prefixes]}`` of the VISSL feature files in ``folder``."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in os.listdir(folder):
        match = _VISSL_FILE.match(name)
        if match:
            prefix, vsplit, layer = match.groups()
            found[(vsplit, layer)].append(prefix)
    return {key: sorted(prefixes, key=_prefix_key) for key, prefixes in found.items()}


def _prefix_key(prefix: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", prefix))


def _choose(found, split: str, layer: str | None, folder: Path) -> tuple[str, str]:
    vsplits = sorted({s for s, _ in found})
    if split in vsplits:
        vsplit = split
    elif len(vsplits) == 1:
        vsplit = vsplits[0]
    elif _SPLIT_ALIASES.get(split) in vsplits:
        vsplit = _SPLIT_ALIASES[split]
    else:
        raise InputError(
            f"{folder} holds VISSL splits {', '.join(vsplits)}; none matches --split {split}",
            hint=f"name the store split after one of them (e.g. --split {vsplits[0]}), or give one features file",
        )
    layers = sorted(lay for s, lay in found if s == vsplit)
    if layer is None:
        if len(layers) > 1:
            raise InputError(
                f"{folder} holds several layers for split '{vsplit}' ({', '.join(layers)})",
                hint="pick one with --layer",
            )
        layer = layers[0]
    elif layer not in layers:
        raise InputError(
            f"{folder} has no layer '{layer}' for split '{vsplit}' (it holds: {', '.join(layers)})",
            hint="pick one of those with --layer",
        )
    return vsplit, layer


_RANK = re.compile(r"^rank(\d+)_")


def _check_gaps(unique_inds: np.ndarray, prefixes, folder: Path, vsplit: str, layer: str, allow_gaps: bool) -> None:
    """Refuse dataset indices 0..max with holes (``unique_inds`` sorted, without duplicates)."""
    if unique_inds.size == 0:
        return
    expected = int(unique_inds[-1]) + 1
    n_missing = expected - int(unique_inds.size)
    if n_missing <= 0:
        return
    present = np.zeros(expected, dtype=bool)
    present[unique_inds] = True
    missing = np.flatnonzero(~present)
    first = int(missing[0])
    run_end = first
    while run_end + 1 < expected and not present[run_end + 1]:
        run_end += 1
    where = f"index {first}" if run_end == first else f"indices {first}..{run_end}"
    message = (
        f"VISSL split '{vsplit}' layer '{layer}' in {folder} has {n_missing} of {expected} dataset "
        f"indices missing (first: {where})"
    )
    if allow_gaps:
        logger.warning("%s; importing the %d rows present (--allow-gaps)", message, unique_inds.size)
        return
    ranks = sorted({int(m.group(1)) for p in prefixes if (m := _RANK.match(p))})
    hint = "copy every rank's shard files, or pass --allow-gaps to import the rows present"
    likely = _likely_missing_ranks(unique_inds, missing, ranks)
    if likely:
        files = ", ".join(f"rank{r}_chunk*_{vsplit}_{layer}_*.npy" for r in likely)
        hint = f"the folder has shards of ranks {', '.join(map(str, ranks))}; likely missing: {files} ({hint})"
    raise InputError(message, hint=hint)


def _likely_missing_ranks(present: np.ndarray, missing: np.ndarray, ranks: list[int]) -> list[int]:
    """Ranks whose indices are the missing ones, under the distributed sampler's rank::world split.

    Tries world sizes just above the highest rank seen: the answer is the residues
    that only missing indices have (empty when no world size explains the gaps).
    """
    top = max(ranks, default=-1)
    for world in range(top + 1, top + 9):
        if world < 2:
            continue
        gone = set(np.unique(missing % world).tolist())
        have = set(np.unique(present % world).tolist())
        if not gone & have and len(gone | have) == world and not set(ranks) & gone:
            return sorted(gone)
    return []


def load_vissl(
    path: str | os.PathLike, *, split: str, layer: str | None = None, allow_gaps: bool = False
) -> ImportedFeatures:
    """Merge the shards of one VISSL split and layer, in dataset-index order.

    Dataset indices with gaps (a rank's shard files missing, say) are refused unless
    ``allow_gaps``: the error names the first missing range and the rank files that
    are likely missing.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        vsplit, layer = _choose(scan_folder(folder), split, layer, folder)
    else:  # one shard's features file names the split and layer
        folder = path.parent
        named = _VISSL_FILE.match(path.name)
        if named is None:
            raise InputError(
                f"{path.name} is not named like a VISSL features file "
                "(rank<R>[_chunk<C>]_<split>_<layer>_features.npy)",
                hint="give the folder of the VISSL extraction, or one of its features files",
            )
        _, vsplit, file_layer = named.groups()
        if layer is not None and layer != file_layer:
            raise InputError(
                f"--layer {layer} does not match the file {path.name} (layer {file_layer})",
                hint="drop --layer or give the folder",
            )
        layer = file_layer
    prefixes = scan_folder(folder)[(vsplit, layer)]

    shards, targets, inds = [], [], []
    for prefix in prefixes:
        stem = f"{prefix}_{vsplit}_{layer}"
        feats = open_npy(folder / f"{stem}_features.npy")
        if feats.ndim < 2:
            check_feature_array(feats)  # the usual "must be a 2-D array" error
        if feats.ndim > 2:
            feats = feats.flat_rows() if isinstance(feats, FileRows) else np.asarray(feats).reshape(len(feats), -1)
        target_file, inds_file = folder / f"{stem}_targets.npy", folder / f"{stem}_inds.npy"
        for needed in (target_file, inds_file):
            if not needed.exists():
                raise InputError(f"VISSL shard file missing: {needed}", hint="copy the whole extraction folder")
        shard_targets = load_npy(target_file, what="labels").reshape(-1)
        shard_inds = load_npy(inds_file, what="labels").reshape(-1).astype(np.int64)
        if not (feats.shape[0] == shard_targets.shape[0] == shard_inds.shape[0]):
            raise InputError(
                f"VISSL shard {stem} has {feats.shape[0]} features, {shard_targets.shape[0]} targets "
                f"and {shard_inds.shape[0]} inds",
                hint="the shard is incomplete; rerun the extraction",
            )
        shards.append(feats)
        targets.append(shard_targets)
        inds.append(shard_inds)
    dims = {s.shape[1] if s.ndim == 2 else None for s in shards}
    if len(dims) != 1 or None in dims:
        raise InputError(f"VISSL shards of layer '{layer}' have different shapes", hint="the folder mixes extractions")

    all_inds = np.concatenate(inds)
    shard_of_row = np.concatenate([np.full(len(i), s, dtype=np.int64) for s, i in enumerate(inds)])
    row_in_shard = np.concatenate([np.arange(len(i), dtype=np.int64) for i in inds])
    order = np.argsort(all_inds, kind="stable")
    keep = np.ones(order.shape[0], dtype=bool)
    keep[1:] = all_inds[order][1:] != all_inds[order][:-1]
    order = order[keep]
    duplicates = int((~keep).sum())
    _check_gaps(all_inds[order], prefixes, folder, vsplit, layer, allow_gaps)
    if duplicates:
        logger.info(
            "dropped %d duplicate rows (VISSL's distributed sampler repeats samples to pad batches)", duplicates
        )

    features = ShardedRows(shards, shard_of_row[order], row_in_shard[order])
    return ImportedFeatures(
        features=features,
        labels=np.concatenate(targets)[order],
        ids=[str(int(i)) for i in all_inds[order]],
        source=f"vissl:{folder.resolve()} split={vsplit} layer={layer}",
        attrs={
            "source_format": "vissl",
            "vissl_split": vsplit,
            "vissl_layer": layer,
            "vissl_shards": len(prefixes),
            "vissl_duplicates_dropped": duplicates,
        },
    )
