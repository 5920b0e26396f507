"""Checkpoint sources: how ``nnk evaluate`` turns a checkpoint into a feature store.

A checkpoint's train and query features are extracted (the torch extra) into
``<history dir>/stores/<sha256[:16]>-<config>.h5``, named by the checkpoint's content
and by the extraction set-up, so a changed model option never reuses a store. Splits
already complete are kept and an interrupted split resumes, so a killed run continues
where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nnkcli.errors import NnkError

logger = logging.getLogger("nnkcli")


@dataclass(frozen=True)
class ModelOptions:
    """How a checkpoint source becomes a feature store (the ``torch`` extra).

    ``extract`` holds further keyword arguments of
    ``nnkcli.extract.torch_extract.extract_image_features`` (``checkpoint_key``,
    ``strip_prefix``, ``trust_checkpoint``, ``device``, ``batch_size``, ``workers``,
    ``skip_bad_images``) and of ``EvalTransform`` (``resize``, ``crop``,
    ``interpolation``, ``mean``, ``std``); all are recorded in the history.
    """

    model: str
    train_images: str
    val_images: str
    extract: dict = field(default_factory=dict)
    keep_store: bool = True


def checkpoint_store_path(history_path: Path, sha256: str, model: ModelOptions | None = None) -> Path:
    """Where a checkpoint's features go: ``<history dir>/stores/<sha256[:16]>[-<config>].h5``."""
    suffix = f"-{model_config_digest(model)}" if model is not None else ""
    return history_path.parent / "stores" / f"{sha256[:16]}{suffix}.h5"


def model_config_digest(model: ModelOptions) -> str:
    """8 hex digits naming the extraction set-up, so a changed --model or option never reuses a store."""
    doc = {
        "model": model.model,
        "train": str(Path(model.train_images).resolve()),
        "val": str(Path(model.val_images).resolve()),
        **model.extract,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:8]


def extract_checkpoint(
    checkpoint: Path,
    store_path: Path,
    model: ModelOptions,
    *,
    train_split: str,
    query_split: str,
    progress_factory: Callable | None = None,
) -> None:
    """Extract a checkpoint's train and query features into ``store_path``.

    Splits already complete in the store (a run killed after extracting them)
    are kept, and an interrupted split is resumed, so a re-run continues where
    the killed one stopped.
    """
    from nnkcli.extract import TRANSFORM_KEYS
    from nnkcli.extract.images import EvalTransform, read_image_list, scan_image_folder
    from nnkcli.extract.torch_extract import extract_image_features

    options = dict(model.extract)
    transform = EvalTransform(**{k: options.pop(k) for k in TRANSFORM_KEYS if k in options})
    if options.get("strip_prefix") is not None:
        options["strip_prefix"] = list(options["strip_prefix"])
    store_path.parent.mkdir(parents=True, exist_ok=True)
    present = _present_splits(store_path)
    for split, images in ((train_split, model.train_images), (query_split, model.val_images)):
        if split in present:
            logger.info(f"  {split}: already extracted in {store_path}")
            continue
        logger.info(f"  extracting split '{split}' from {images}")
        # a folder with one sub-folder per class, or a CSV list of path,label rows
        samples = read_image_list(images) if Path(images).is_file() else scan_image_folder(images)
        bar = progress_factory(len(samples), f"extracting {split}") if progress_factory else contextlib.nullcontext()
        with bar as advance:
            extract_image_features(
                store_path,
                split,
                samples,
                model.model,
                checkpoint=checkpoint,
                transform=transform,
                resume=True,
                progress=advance,
                **options,
            )


def _present_splits(store_path: Path) -> set[str]:
    if not store_path.exists():
        return set()
    from nnkcli.storage.store import FeatureStore

    try:
        return set(FeatureStore(store_path).splits)
    except NnkError:
        return set()
