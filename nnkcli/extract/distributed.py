"""Model extraction split across the processes of a ``torchrun`` launch (``torch.distributed``).

``torchrun --nproc-per-node N -m nnkcli extract STORE --split train --images DIR --model SPEC``
starts N copies of the command; torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) tells each which one it is, and
multi-node runs use torchrun's usual rendezvous. Then:

1. every rank extracts one **contiguous** slice of the image list (sizes differ by at most
   one image; nothing is padded or repeated, unlike a ``DistributedSampler``) into its own
   hidden rank store ``.<store>.<split>.rank-R-of-N.h5`` beside the store, through the same
   resumable writer as a single-process run;
2. all ranks meet at a barrier;
3. rank 0 streams the rank stores, in rank order, into the split of the real store and
   commits it atomically, then deletes the rank stores; a last barrier releases the others.

A rank that is killed leaves the real store unchanged; ``--resume`` reuses the finished
rank stores and continues every unfinished rank's slice from its partial rows. The
process group uses ``gloo`` on the CPU and ``nccl`` on CUDA (``cuda:LOCAL_RANK``).
The assembled split holds exactly the rows, labels and ids a single process would write.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from nnkcli.errors import InputError, StoreError

logger = logging.getLogger("nnkcli")


def launched_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under a torchrun launch of more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise InputError(
            "WORLD_SIZE is set but RANK is missing or not an integer",
            hint="launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK",
        ) from None


def rank_slice(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``start:stop`` of rank ``rank``: contiguous, the first ``n % world`` ranks one row longer."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_store_path(store_path: Path, split: str, rank: int, world: int) -> Path:
    return store_path.with_name(f".{store_path.name}.{split}.rank-{rank}-of-{world}.h5")


def _remove_rank_store(path: Path, split: str) -> None:
    from nnkcli.storage.split_writer import partial_path

    path.unlink(missing_ok=True)
    shutil.rmtree(partial_path(path, split), ignore_errors=True)
    # a rank store is private to its rank and only removed when that rank is not writing it
    # (before its own extraction, or by rank 0 after the barrier), so its lock file can go too
    Path(f"{path}.lock").unlink(missing_ok=True)


def extract_distributed(
    store_path,
    split,
    samples,
    model,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress=None,
    **options,
) -> dict:
    """:func:`nnkcli.extract.torch_extract.extract_image_features` across the ranks of a torchrun launch.

    Every rank returns the assembled split's summary (rank 0 wrote it). ``options`` are
    the single-process keyword arguments (checkpoint, transform, batch_size, ...).
    """
    import torch
    import torch.distributed as dist

    from nnkcli.extract.torch_extract import extract_image_features
    from nnkcli.storage.store import FeatureStore, check_writable

    launch = launched_world()
    if launch is None:
        raise InputError(
            "extract_distributed needs a torchrun launch of more than one process",
            hint="call extract_image_features in a single process",
        )
    rank, world, local_rank = launch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{local_rank}"  # one GPU per process on each node
    store_path = Path(store_path)
    existing_dim = None
    if store_path.is_file():
        with FeatureStore(store_path) as store:
            existing_dim = store.dim
    check_writable(store_path, split, existing_dim or 1, overwrite)  # every rank refuses before the work

    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        start, stop = rank_slice(len(samples), rank, world)
        part = rank_store_path(store_path, split, rank, world)
        if not resume:
            _remove_rank_store(part, split)
        if stop > start and not _finished(part, split):
            mine = replace(
                samples, paths=samples.paths[start:stop], labels=samples.labels[start:stop], ids=samples.ids[start:stop]
            )
            logger.info("rank %d of %d: images %d:%d", rank, world, start, stop)
            extract_image_features(
                part, split, mine, model, device=device, resume=resume, overwrite=True, progress=progress, **options
            )
        elif stop > start:
            logger.info("rank %d of %d: images %d:%d already extracted (--resume)", rank, world, start, stop)
            if progress is not None:
                progress(stop - start)
        dist.barrier()
        summary = None
        if rank == 0:
            summary = assemble(
                store_path, split, samples, world, overwrite=overwrite, lock_timeout=options.get("lock_timeout")
            )
        box: list[Any] = [summary]  # the other ranks receive rank 0's summary here
        dist.broadcast_object_list(box, src=0)
        return dict(box[0], ranks=world, device=device)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _finished(part: Path, split: str) -> bool:
    from nnkcli.storage.store import FeatureStore

    if not part.is_file():
        return False
    try:
        with FeatureStore(part) as store:
            return split in store
    except StoreError:
        return False


def assemble(
    store_path: Path, split: str, samples, world: int, *, overwrite: bool, lock_timeout: float | None = None
) -> dict:
    """Rank 0: the rank stores, in rank order, into ``store_path``/``split`` (one atomic commit)."""
    from nnkcli.storage.split_writer import SplitWriter
    from nnkcli.storage.store import RESERVED_ATTRS, FeatureStore

    parts = []
    for rank in range(world):
        start, stop = rank_slice(len(samples), rank, world)
        if stop > start:
            parts.append((rank, start, stop, rank_store_path(store_path, split, rank, world)))
    opened = []
    try:
        for rank, start, stop, path in parts:
            if not _finished(path, split):
                raise StoreError(
                    f"rank {rank} of {world} did not finish its images {start}:{stop} ({path})",
                    hint="rerun the same torchrun command with --resume",
                )
            opened.append(FeatureStore(path))
        first = opened[0].split(split)
        attrs = {k: v for k, v in first.attrs.items() if k not in RESERVED_ATTRS and k != "skipped_images"}
        skipped = sum(int(fs.split(split).attrs.get("skipped_images", 0)) for fs in opened)
        attrs["skipped_images"] = skipped
        name_to_id = {c: i for i, c in enumerate(samples.class_names)}
        writer = SplitWriter(
            store_path,
            split,
            dim=first.dim,
            class_names=samples.class_names,
            source=str(first.attrs["source"]),
            attrs=attrs,
            overwrite=overwrite,
            expected_rows=len(samples),
            lock_timeout=lock_timeout,
        )
        with writer:
            for (rank, start, stop, _), fs in zip(parts, opened, strict=True):
                sp = fs.split(split)
                ids = sp.ids or []
                _check_order(ids, samples.ids[start:stop], rank, world)
                # labels are ids into the rank store's class list: map them by name
                names = fs.classes or []
                lut = np.array([name_to_id[c] for c in names] + [-1], dtype=np.int64)
                labels = sp.labels
                labels = lut[np.where(labels < 0, len(names), labels)]
                step = 8192
                for s in range(0, sp.n, step):
                    e = min(s + step, sp.n)
                    writer.append(np.asarray(sp.features[s:e]), labels[s:e], ids=ids[s:e])
        summary = dict(writer.summary or {})
    finally:
        for fs in opened:
            fs.close()
    for _, _, _, path in parts:
        _remove_rank_store(path, split)
    summary["skipped_images"] = skipped
    logger.info("assembled split '%s' from %d ranks: %d rows", split, world, summary.get("n", 0))
    return summary


def _check_order(ids: list[str], expected: list[str], rank: int, world: int) -> None:
    """A rank's rows must be its slice's images in order (minus skipped ones)."""
    position = {sample: i for i, sample in enumerate(expected)}
    seen = [position.get(i, -1) for i in ids]
    if any(p < 0 for p in seen) or any(b <= a for a, b in pairwise(seen)):
        raise StoreError(
            f"the rows of rank {rank} of {world} are not its images in order",
            hint="rerun without --resume to extract again",
        )
