"""The model option bundle of ``nnk extract --images`` and ``nnk evaluate``: the model, the features
taken from it, its checkpoint handling and its evaluation transform (``MODEL_PARAMS``).

Kept apart from ``_options.py`` (the scoring, data and gate bundles); the transform options
are checked while parsed by ``EvalTransform``'s own rules.
"""

from __future__ import annotations

import math
from typing import Any

import click

from nnkcli.commands._options import device_options

# -- the model and its transform: extract --images and evaluate -----------------------------------
MODEL_PARAMS = (
    "model",
    "features",
    "layer",
    "checkpoint_key",
    "strip_prefix",
    "trust_checkpoint",
    "resize",
    "crop",
    "interpolation",
    "mean",
    "std",
    "device",
    "batch_size",
    "workers",
    "fp16",
    "skip_bad_images",
)


def _transform_check(field: str):
    """Parse (R,G,B for mean/std) and check one transform field with ``EvalTransform``'s own rule."""

    def callback(ctx, param, value):
        from nnkcli.errors import InputError
        from nnkcli.extract.images import EvalTransform

        if value is None:
            return None
        if field in ("mean", "std"):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise click.BadParameter(f"expected 3 comma-separated numbers (R,G,B), got {value!r}") from None
            if len(value) != 3:
                raise click.BadParameter(f"expected 3 comma-separated numbers (R,G,B), got {','.join(map(str, value))}")
            if not all(math.isfinite(v) for v in value):
                raise click.BadParameter(f"expected finite numbers (R,G,B), got {','.join(map(str, value))}")
        if field == "crop":
            return value  # checked against --resize by the transform, once both are known
        # a resize is checked with the smallest crop, the crop being checked against the resize later
        checked: dict[str, Any] = {field: value, "crop": 1} if field == "resize" else {field: value}
        try:
            EvalTransform(**checked)
        except InputError as exc:
            raise click.BadParameter(exc.message + (f"; {exc.hint}" if exc.hint else "")) from None
        return value

    return callback


#: ``--layer`` of a model; ``nnk extract`` adds what it means for ``--from`` (a VISSL layer)
LAYER_HELP = "Sub-module whose output are the features, by a forward hook (e.g. avgpool, head.0)."


def model_options(f=None, *, layer_help: str = LAYER_HELP):
    """The model, its checkpoint handling and its evaluation transform (``MODEL_PARAMS``)."""
    if f is None:
        return lambda g: model_options(g, layer_help=layer_help)
    from nnkcli.extract.images import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalTransform
    from nnkcli.extract.presets import FEATURES

    def rgb(values):
        return ",".join(f"{v:g}" for v in values)

    device, fp16 = device_options()
    options = [
        click.option(
            "--model",
            default=None,
            metavar="SPEC",
            help="timm:NAME[,key=value...], hf:DIR, torchvision:NAME, torchscript:FILE.pt or MODULE:CALLABLE.",
        ),
        click.option(
            "--features",
            type=click.Choice(FEATURES),
            default=None,
            help="What the model gives: its own output, or a ViT's tokens after the final norm: the class "
            "token, the mean patch token, both, or the class tokens of the last 4 blocks [default: output].",
        ),
        click.option("--layer", default=None, metavar="NAME", help=layer_help),
        click.option(
            "--checkpoint-key",
            default=None,
            metavar="KEY",
            help="Key of the nested state dict, a.b for deeper (default: auto-detect state_dict/model/teacher/...).",
        ),
        click.option(
            "--strip-prefix",
            multiple=True,
            metavar="PREFIX",
            help="Key prefix to remove (default: auto-detect module./backbone./...). Repeatable.",
        ),
        click.option(
            "--trust-checkpoint",
            is_flag=True,
            help="Allow arbitrary pickled objects in the checkpoint (unpickling runs code).",
        ),
        click.option(
            "--resize",
            type=int,
            default=EvalTransform.resize,
            show_default=True,
            metavar="PX",
            callback=_transform_check("resize"),
            help="Shorter side before cropping.",
        ),
        click.option(
            "--crop",
            type=click.IntRange(min=1),
            default=EvalTransform.crop,
            show_default=True,
            metavar="PX",
            help="Center-crop size (at most --resize).",
        ),
        click.option(
            "--interpolation",
            type=click.Choice(INTERPOLATIONS),
            default=EvalTransform.interpolation,
            show_default=True,
            help="Resize interpolation (bicubic: DINO's evaluation protocol).",
        ),
        click.option(
            "--mean",
            default=rgb(IMAGENET_MEAN),
            show_default=True,
            metavar="R,G,B",
            callback=_transform_check("mean"),
            help="Normalization mean.",
        ),
        click.option(
            "--std",
            default=rgb(IMAGENET_STD),
            show_default=True,
            metavar="R,G,B",
            callback=_transform_check("std"),
            help="Normalization std (each > 0).",
        ),
        device,
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            metavar="N",
            help="Images per forward pass.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=4,
            show_default=True,
            metavar="N",
            help="DataLoader worker processes decoding images.",
        ),
        fp16,
        click.option("--skip-bad-images", is_flag=True, help="Skip (and count) files that cannot be decoded."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f
