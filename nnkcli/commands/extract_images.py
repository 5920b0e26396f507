"""Click options of ``nnk extract`` for the model path (``--images``/``--model``).

Kept apart from ``commands/extract.py`` so that the array importers and the model
extractor evolve independently; ``extract`` applies ``image_options`` and hands
over to ``run_image_extraction`` when ``--images``/``--image-list`` is given.
torch is imported only once that happens, so ``nnk --help`` works without it.
"""

from __future__ import annotations

import click

from nnkcli.commands._model_options import LAYER_HELP, MODEL_PARAMS, model_options
from nnkcli.commands._options import given_on_command_line
from nnkcli.extract import TRANSFORM_KEYS, require_torch
from nnkcli.extract.presets import EXTRACTION_PROTOCOLS

#: the options of the model path (``--layer`` serves both paths: a VISSL layer with --from)
IMAGE_OPTION_NAMES = (
    "images",
    "image_list",
    "checkpoint",
    "resume",
    "protocol",
    *(n for n in MODEL_PARAMS if n != "layer"),
)


def image_options(f):
    """Options for extracting features with a model from an image folder / list."""
    opts = [
        click.option(
            "--images",
            type=click.Path(file_okay=False, path_type=str),
            default=None,
            help="Image folder: one sub-folder per class (sorted names -> class ids).",
        ),
        click.option(
            "--image-list",
            type=click.Path(dir_okay=False, path_type=str),
            default=None,
            help="CSV file of path,label rows instead of --images (paths relative to the file).",
        ),
        click.option(
            "--checkpoint",
            type=click.Path(dir_okay=False, path_type=str),
            default=None,
            help="State dict to load into the model (strict: every parameter must be present).",
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted extraction of this split."),
        click.option(
            "--protocol",
            type=click.Choice(list(EXTRACTION_PROTOCOLS)),
            default=None,
            help="A peer's evaluation transform and feature choice (dino, dinov2: resize 256 bicubic, crop 224, "
            "class token; clip: 224, CLIP's mean/std, the model's output; mae: as dino); options given override it.",
        ),
    ]
    f = model_options(f, layer_help=LAYER_HELP[:-1] + "; with --from: the VISSL layer to import.")
    for opt in reversed(opts):
        f = opt(f)
    return f


def run_image_extraction(ctx: click.Context, *, store: str, split: str, overwrite: bool, meta: dict, **options):
    """Extract features with a model into ``store``/``split``; returns the JSON-able summary dict.

    Raises
    ------
    click.UsageError
        Inconsistent options (exit 2).
    MissingDependencyError
        torch or pillow is not installed.
    nnkcli.errors.NnkError
        Anything the extraction refuses (see ``extract_image_features``).
    """
    from nnkcli.cli import get_ui

    images, image_list = options.get("images"), options.get("image_list")
    if images and image_list:
        raise click.UsageError("give --images or --image-list, not both")
    image_source = images or image_list
    if not image_source:
        raise click.UsageError("--model needs --images DIR or --image-list FILE.csv")
    if not options.get("model"):
        raise click.UsageError(
            "--images/--image-list need --model SPEC (timm:NAME, hf:DIR, torchvision:NAME, torchscript:FILE "
            "or MODULE:CALLABLE)"
        )
    for name in ("checkpoint_key", "trust_checkpoint"):
        if options.get(name) and not options.get("checkpoint"):
            raise click.UsageError(f"--{name.replace('_', '-')} needs --checkpoint")
    if options.get("strip_prefix") and not options.get("checkpoint"):
        raise click.UsageError("--strip-prefix needs --checkpoint")
    require_torch("model extraction")

    from nnkcli.extract.distributed import extract_distributed, launched_world
    from nnkcli.extract.images import EvalTransform, read_image_list, scan_image_folder
    from nnkcli.extract.torch_extract import extract_image_features

    ui = get_ui(ctx)
    from nnkcli.extract.presets import apply_extraction_protocol

    protocol = options.get("protocol")
    given = set(given_on_command_line(ctx, [*TRANSFORM_KEYS, "features"]))
    settings = apply_extraction_protocol(protocol, {key: options[key] for key in TRANSFORM_KEYS}, given)
    transform = EvalTransform(**{key: settings[key] for key in TRANSFORM_KEYS})
    samples = scan_image_folder(image_source) if images else read_image_list(image_source)
    world = launched_world()  # (rank, world size, local rank) under torchrun, else None
    run = extract_image_features if world is None else extract_distributed
    if world is None:
        total = len(samples)
    else:
        rank_start, rank_stop = _rank_bounds(len(samples), world)
        total = rank_stop - rank_start
    with ui.progress(total, f"extracting {split}", unit="images") as advance:
        summary = run(
            store,
            split,
            samples,
            options["model"],
            checkpoint=options.get("checkpoint"),
            checkpoint_key=options.get("checkpoint_key"),
            strip_prefix=list(options.get("strip_prefix") or ()) or None,
            trust_checkpoint=bool(options.get("trust_checkpoint")),
            transform=transform,
            features=options.get("features"),
            layer=options.get("layer"),
            protocol=protocol,
            device=options["device"],
            batch_size=options["batch_size"],
            workers=options["workers"],
            fp16=bool(options.get("fp16")),
            resume=bool(options.get("resume")),
            skip_bad_images=bool(options.get("skip_bad_images")),
            overwrite=overwrite,
            meta=meta,
            progress=advance,
            lock_timeout=options.get("lock_timeout"),
        )
    if world is not None:
        summary["rank"] = world[0]
    return summary


def _rank_bounds(n: int, world: tuple[int, int, int]) -> tuple[int, int]:
    from nnkcli.extract.distributed import rank_slice

    return rank_slice(n, world[0], world[1])
