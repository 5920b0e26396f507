"""Extract features from images with a torch model into a feature store.

The model runs in ``eval()`` mode under ``torch.inference_mode()``; batches stream
into a resumable :class:`nnkcli.storage.split_writer.SplitWriter`, so memory stays about one batch
and the split appears in the store only once every image is done. A killed run
leaves its rows in the writer's partial folder; ``resume=True`` skips them (the
sample order is deterministic) and continues.

This module imports torch at the top: import it only after checking that torch is
installed (``nnkcli.commands.extract_images`` does).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from nnkcli.errors import InputError, StoreError
from nnkcli.extract.images import EvalTransform, ImageDataset, ImageSamples
from nnkcli.extract.models import LoadedModel, ModelSpec, build_model, parse_model_spec
from nnkcli.extract.torch_checkpoints import load_checkpoint

logger = logging.getLogger("nnkcli")

#: How many skipped files are named in the summary (all are counted).
_SKIPPED_SHOWN = 10


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; refuses CUDA without a GPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {device}: CUDA is not available to this torch build",
            hint="use --device cpu (or auto), or install a CUDA build of torch",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu or cuda; got {device!r}", hint="e.g. --device cpu")
    return device


def forward_features(model, images, *, fp16: bool = False) -> np.ndarray:
    """Run ``model`` on a batch and return its pooled features.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on the device of ``images``.
    images : Tensor, shape (n, 3, h, w), float32
    fp16 : bool, default=False
        Autocast to float16 (CUDA only).

    Returns
    -------
    ndarray of shape (n, d), float32
        (n, d, 1, 1) outputs are flattened; anything else is refused.
    """
    with torch.inference_mode():
        if fp16:
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(images)
        else:
            out = model(images)
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"the model returned a {type(out).__name__}, not a tensor of features",
            hint="wrap it in a MODULE:CALLABLE factory whose module returns the (n, d) feature tensor",
        )
    if out.ndim == 4 and out.shape[2:] == (1, 1):
        out = out.flatten(1)
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise InputError(
            f"the model's output has shape {tuple(out.shape)} for {images.shape[0]} images; "
            "expected pooled features (n, d)",
            hint="use a model that pools its output (for a feature map, add global average pooling)",
        )
    return out.float().cpu().numpy()


def _resume_position(writer, samples: ImageSamples) -> tuple[int, list[int]]:
    """The sample position after the rows the writer already holds, and the skipped ones.

    Rows carry their sample ids, so positions skipped as undecodable in the
    interrupted run are found by walking the samples alongside the written ids.
    """
    written = writer.written_ids() or []
    if len(written) != writer.n_written:
        raise StoreError(
            f"the interrupted extraction of split '{writer.split}' has no sample ids to resume from",
            hint=f"drop --resume to start over, or delete {writer.staging}",
        )
    position, skipped = 0, []
    for sample_id in written:
        while position < len(samples) and samples.ids[position] != sample_id:
            skipped.append(position)
            position += 1
        if position == len(samples):
            raise StoreError(
                f"the interrupted extraction of split '{writer.split}' holds image {sample_id!r}, "
                "which is not among the images now",
                hint=f"drop --resume to start over, or delete {writer.staging}",
            )
        position += 1
    return position, skipped


def _check_rows(features: np.ndarray, ids: Sequence[str], fp16: bool) -> None:
    """Name the image whose features cannot be stored (the store would only say a row)."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        first = ids[int(np.flatnonzero(~finite)[0])]
        raise InputError(
            f"the model gave NaN or Inf features for {int((~finite).sum())} images, first {first}",
            hint="drop --fp16 (float16 overflows)" if fp16 else "check the checkpoint and the model",
        )
    zero = ~np.any(features != 0, axis=1)
    if zero.any():
        first = ids[int(np.flatnonzero(zero)[0])]
        raise InputError(
            f"the model gave all-zero features for {int(zero.sum())} images, first {first}; "
            "cosine similarity is undefined for them",
            hint="check the checkpoint (dead weights?) and that the output is the pooled feature",
        )


def _prepare_model(model, checkpoint, checkpoint_key, strip_prefix, trust_checkpoint, *, input_size=None):
    """Build the model and load its checkpoint; returns (spec, module, provenance attrs)."""
    if isinstance(model, str):
        spec = parse_model_spec(model)
        if spec.needs_checkpoint and checkpoint is None:
            raise InputError(
                f"--model {spec.text} without --checkpoint would extract features of random weights",
                hint="pass --checkpoint PATH with the trained weights",
            )
        if spec.kind == "hf" and checkpoint is not None:
            raise InputError(
                f"--model {spec.text} takes its weights from the folder; --checkpoint would overwrite them",
                hint="drop --checkpoint, or save the trained model into the folder with save_pretrained",
            )
        loaded = build_model(spec, input_size=input_size)
    elif isinstance(model, torch.nn.Module):  # from Python: a module built by the caller
        loaded = LoadedModel(model, ModelSpec("module", type(model).__name__, f"python:{type(model).__qualname__}"))
    else:
        loaded = model
    spec, module = loaded.spec, loaded.module
    attrs: dict = {"model": spec.text}
    if loaded.head_replaced:
        logger.info("model: %s, classification head %r replaced by identity", spec.text, loaded.head_replaced)
        attrs["head_replaced"] = loaded.head_replaced
    if checkpoint is not None:
        report = load_checkpoint(
            module,
            checkpoint,
            key=checkpoint_key,
            strip_prefix=strip_prefix,
            trust=trust_checkpoint,
            converter=loaded.converter,
        )
        attrs.update(
            {
                "checkpoint": str(Path(checkpoint).resolve()),
                "checkpoint_sha256": report.sha256,
                "checkpoint_key": report.key or "",
                "checkpoint_stripped_prefix": ",".join(report.stripped),
            }
        )
        if report.conversion:
            attrs["checkpoint_conversion"] = report.conversion
        logger.info("checkpoint: loaded %d tensors, sha256 %s", report.n_loaded, report.sha256[:16])
    return spec, module, attrs


def _choose_features(module, features, layer, protocol, attrs):
    """Wrap ``module`` so that it returns the features asked for; records them in ``attrs``."""
    from nnkcli.extract.features import FeatureModel
    from nnkcli.extract.presets import EXTRACTION_PROTOCOLS

    fallback = features is None and protocol is not None
    if features is None:
        features = EXTRACTION_PROTOCOLS[protocol].features if protocol is not None else "output"
    if protocol is not None:
        attrs["protocol"] = protocol
    if features == "output" and layer is None:
        return module
    wrapped = FeatureModel(module, features, layer, fallback=fallback)
    if wrapped.features != "output":  # the default is not recorded: older splits compare equal
        attrs["features"] = wrapped.features
    if layer is not None:
        attrs["layer"] = layer
    logger.info("features: %s%s", wrapped.features, f" of layer {layer}" if layer else "")
    return wrapped


def extract_image_features(
    store_path: str | os.PathLike,
    split: str,
    samples: ImageSamples,
    model: LoadedModel | torch.nn.Module | str,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_key: str | None = None,
    strip_prefix: Sequence[str] | None = None,
    trust_checkpoint: bool = False,
    transform: EvalTransform | None = None,
    features: str | None = None,
    layer: str | None = None,
    protocol: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    fp16: bool = False,
    resume: bool = False,
    skip_bad_images: bool = False,
    overwrite: bool = False,
    meta: Mapping[str, object] | None = None,
    progress: Callable[[int], None] | None = None,
    lock_timeout: float | None = None,
) -> dict:
    """Extract one split's features with a model and write them to the store.

    Parameters
    ----------
    store_path : path-like
        The feature store (created when missing).
    split : str
        Split name, e.g. ``"train"``.
    samples : ImageSamples
        From ``scan_image_folder`` or ``read_image_list``; their order is the row order.
    model : LoadedModel, torch.nn.Module or str
        A built model, or a spec (``torchvision:NAME``, ``torchscript:FILE``,
        ``MODULE:CALLABLE``) to build.
    checkpoint : path-like, optional
        Weights to load strictly (see ``nnkcli.extract.models.load_checkpoint``).
        Required for ``torchvision:`` specs, which are otherwise random.
    checkpoint_key, strip_prefix, trust_checkpoint
        Passed to ``load_checkpoint``.
    transform : EvalTransform, optional
        Default: the ``protocol``'s, else resize 256 (bicubic), centre-crop 224, ImageNet
        normalisation.
    features : str, optional
        One of ``nnkcli.extract.presets.FEATURES`` (see ``nnkcli.extract.features``);
        default: the ``protocol``'s, else ``"output"`` (the model's own output).
    layer : str, optional
        Sub-module whose output is taken by a forward hook (``avgpool``).
    protocol : str, optional
        A preset of ``nnkcli.extract.presets.EXTRACTION_PROTOCOLS``: fills ``transform``
        and ``features`` when they are not given, and is recorded with the split.
    device : {"auto", "cpu", "cuda"}, default="auto"
    batch_size : int, default=64
    workers : int, default=0
        DataLoader worker processes decoding images.
    fp16 : bool, default=False
        float16 autocast (CUDA only); features are stored as float32.
    resume : bool, default=False
        Continue an interrupted run of this split (same model, checkpoint, images,
        transform, device); without it an old partial run is discarded.
    skip_bad_images : bool, default=False
        Skip and count files that cannot be decoded instead of stopping.
    overwrite : bool, default=False
        Replace an existing split.
    meta : mapping, optional
        User provenance pairs stored with the split.
    progress : callable, optional
        Called with the number of images done after each batch.

    Returns
    -------
    dict
        The store's write summary plus ``n_images``, ``skipped_images``,
        ``skipped_files`` (the first few), ``resumed_rows``, ``device``, ``seconds``,
        ``images_per_s``, ``checkpoint_sha256``.

    Raises
    ------
    InputError
        Bad model/checkpoint/options, an undecodable image (without
        ``skip_bad_images``), non-finite or all-zero features.
    StoreError
        The split exists (without ``overwrite``), or the partial run does not match.
    """
    from nnkcli.storage.split_writer import SplitWriter, partial_path
    from nnkcli.storage.store import FeatureStore, check_writable

    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1; got {batch_size}", hint="e.g. --batch-size 64")
    if workers < 0:
        raise InputError(f"--workers must be >= 0; got {workers}", hint="0 decodes images in the main process")
    if len(samples) == 0:
        raise InputError("there are no images to extract", hint="check --images / --image-list")
    if protocol is not None:
        from nnkcli.extract.presets import EXTRACTION_PROTOCOLS, apply_extraction_protocol

        if transform is None:
            preset = apply_extraction_protocol(protocol, {}, given=set())
            transform = EvalTransform(**{k: preset[k] for k in ("resize", "crop", "interpolation", "mean", "std")})
        elif protocol not in EXTRACTION_PROTOCOLS:
            apply_extraction_protocol(protocol, {}, given=set())  # the error naming the choices
    transform = transform or EvalTransform()
    device = resolve_device(device)
    if fp16 and not device.startswith("cuda"):
        raise InputError("--fp16 needs a CUDA device", hint="drop --fp16 on the CPU (or use --device cuda)")
    store_path = Path(store_path)
    # refuse an existing split before spending minutes on the model
    existing_dim = None
    if store_path.is_file():
        with FeatureStore(store_path) as store:
            existing_dim = store.dim
    check_writable(store_path, split, existing_dim or 1, overwrite)

    spec, module, attrs = _prepare_model(
        model, checkpoint, checkpoint_key, strip_prefix, trust_checkpoint, input_size=transform.crop
    )
    module = _choose_features(module, features, layer, protocol, attrs)
    attrs.update(
        {
            "images": samples.root,
            "transform": transform.describe(),
            "resize": transform.resize,
            "crop": transform.crop,
            "interpolation": transform.interpolation,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "device": device,
            "fp16": bool(fp16),
        }
    )
    for key in meta or {}:
        if key in attrs or key in ("skipped_images", "source"):
            raise InputError(
                f"--meta {key}=... would overwrite what nnk extract records",
                hint=f"choose another name than {key!r}",
            )
    attrs.update(meta or {})
    source = f"model {spec.text} on images {samples.root}"
    if checkpoint is not None:
        source += f" with checkpoint {Path(checkpoint).name}"

    module.eval()
    module.to(device)
    crop = transform.crop
    dim = forward_features(module, torch.zeros(1, 3, crop, crop, device=device), fp16=fp16).shape[1]

    partial = partial_path(store_path, split)
    if not resume and partial.exists():
        logger.warning(
            "discarding the interrupted extraction of split '%s' in %s (pass --resume to continue it)", split, partial
        )
        shutil.rmtree(partial)

    advance = progress or (lambda n: None)
    started = time.monotonic()
    skipped: list[int] = []
    resumed_rows = 0
    writer = SplitWriter(
        store_path,
        split,
        dim=dim,
        class_names=samples.class_names,
        source=source,
        attrs=attrs,
        overwrite=overwrite,
        expected_rows=len(samples),
        resumable=True,
        lock_timeout=lock_timeout,
    )
    with writer:
        start = 0
        if writer.n_written:
            start, skipped = _resume_position(writer, samples)
            resumed_rows = writer.n_written
            logger.info("resuming after %d images (%d rows already extracted)", start, resumed_rows)
            advance(start)
        elif resume:
            logger.info("nothing to resume for split '%s'; starting from the first image", split)
        logger.info(
            "extracting %d images (%d classes) with %s on %s, %d per batch",
            len(samples) - start,
            len(samples.class_names),
            spec.text,
            device,
            batch_size,
        )
        # any map-style dataset (__len__, __getitem__) will do: ImageDataset stays free of torch
        dataset = cast("torch.utils.data.Dataset[tuple[Any, ...]]", ImageDataset(samples, transform, start))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=device.startswith("cuda"),
        )
        try:
            for images, labels, positions, errors in loader:
                positions = positions.tolist()
                keep = [i for i, error in enumerate(errors) if not error]
                for i in (i for i, error in enumerate(errors) if error):
                    if not skip_bad_images:
                        raise InputError(
                            f"cannot decode image {samples.paths[positions[i]]}: {errors[i]}",
                            hint="replace the file and rerun with --resume (the images done are kept), "
                            "or pass --skip-bad-images to skip and count such files",
                        )
                    skipped.append(positions[i])
                    logger.debug("skipped %s: %s", samples.paths[positions[i]], errors[i])
                if keep:
                    index = torch.tensor(keep)
                    batch = images.index_select(0, index).to(device, non_blocking=True)
                    rows = forward_features(module, batch, fp16=fp16)
                    ids = [samples.ids[positions[i]] for i in keep]
                    _check_rows(rows, ids, fp16)
                    writer.append(rows, labels.index_select(0, index).numpy().astype(np.int64), ids=ids)
                advance(len(positions))
        except KeyboardInterrupt:
            logger.warning("interrupted after %d rows; rerun with --resume to continue", writer.n_written)
            raise
        # known only now; the writer stores its attrs at commit
        writer.attrs["skipped_images"] = len(skipped)
    seconds = time.monotonic() - started
    if skipped:
        logger.warning("skipped %d images that could not be decoded, first %s", len(skipped), samples.paths[skipped[0]])
    summary = dict(writer.summary or {})
    done = len(samples) - start
    summary.update(
        {
            "n_images": len(samples),
            "skipped_images": len(skipped),
            "skipped_files": [samples.ids[p] for p in skipped[:_SKIPPED_SHOWN]],
            "resumed_rows": resumed_rows,
            "model": spec.text,
            "checkpoint_sha256": attrs.get("checkpoint_sha256"),
            "device": device,
            "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 1) if seconds > 0 else None,
        }
    )
    return summary
