"""Click options of ``nnk extract`` for the model path (``--images``/``--model``).

Kept apart from ``commands/extract.py`` so that the array importers and the model
extractor evolve independently; ``extract`` applies ``image_options`` and hands
over to ``run_image_extraction`` when ``--images``/``--image-list`` is given.
torch is imported only once that happens, so ``nnk --help`` works without it.
"""

from __future__ import annotations

import click

from nnkcli.errors import MissingDependencyError

IMAGE_OPTION_NAMES = (
    "images", "image_list", "model", "checkpoint", "checkpoint_key", "strip_prefix", "trust_checkpoint",
    "resize", "crop", "interpolation", "mean", "std", "device", "batch_size", "workers", "fp16", "resume",
    "skip_bad_images",
)


def image_options(f):
    """Options for extracting features with a model from an image folder / list."""
    opts = [
        click.option("--images", type=click.Path(file_okay=False, path_type=str), default=None,
                     help="Image folder: one sub-folder per class (sorted names -> class ids)."),
        click.option("--image-list", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="CSV file of path,label rows instead of --images (paths relative to the file)."),
        click.option("--model", default=None, metavar="SPEC",
                     help="torchvision:NAME, torchscript:FILE.pt or MODULE:CALLABLE."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="State dict to load into the model (strict: every parameter must be present)."),
        click.option("--checkpoint-key", default=None, metavar="KEY",
                     help="Key of the nested state dict, a.b for deeper (default: auto-detect "
                          "state_dict/model/teacher/...)."),
        click.option("--strip-prefix", multiple=True, metavar="PREFIX",
                     help="Key prefix to remove (default: auto-detect module./backbone./...). Repeatable."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow arbitrary pickled objects in the checkpoint (unpickling runs code)."),
        click.option("--resize", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Shorter side before cropping."),
        click.option("--crop", type=click.IntRange(min=1), default=224, show_default=True,
                     help="Centre-crop size."),
        click.option("--interpolation", type=click.Choice(["bicubic", "bilinear"]), default="bicubic",
                     show_default=True, help="Resize interpolation (bicubic: DINO's evaluation protocol)."),
        click.option("--mean", default="0.485,0.456,0.406", show_default=True, metavar="R,G,B",
                     help="Normalisation mean."),
        click.option("--std", default="0.229,0.224,0.225", show_default=True, metavar="R,G,B",
                     help="Normalisation std."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="auto: CUDA when available."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
                     help="DataLoader worker processes decoding images."),
        click.option("--fp16", is_flag=True, help="Half-precision forward pass (CUDA only)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted extraction of this split."),
        click.option("--skip-bad-images", is_flag=True, help="Skip (and count) files that cannot be decoded."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _triple(value: str, name: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise click.BadParameter(f"expected 3 comma-separated numbers (R,G,B), got {value!r}", param_hint=name)
    return parts


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
    if not images and not image_list:
        raise click.UsageError("--model needs --images DIR or --image-list FILE.csv")
    if not options.get("model"):
        raise click.UsageError("--images/--image-list need --model SPEC (torchvision:NAME, torchscript:FILE "
                               "or MODULE:CALLABLE)")
    for name in ("checkpoint_key", "trust_checkpoint"):
        if options.get(name) and not options.get("checkpoint"):
            raise click.UsageError(f"--{name.replace('_', '-')} needs --checkpoint")
    if options.get("strip_prefix") and not options.get("checkpoint"):
        raise click.UsageError("--strip-prefix needs --checkpoint")
    mean = _triple(options.get("mean") or "0.485,0.456,0.406", "--mean")
    std = _triple(options.get("std") or "0.229,0.224,0.225", "--std")
    try:
        import PIL.Image  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("model extraction", "torch") from None

    from nnkcli.extract.distributed import extract_distributed, launched_world
    from nnkcli.extract.images import EvalTransform, read_image_list, scan_image_folder
    from nnkcli.extract.torch_extract import extract_image_features

    ui = get_ui(ctx)
    transform = EvalTransform(
        resize=options.get("resize", 256), crop=options.get("crop", 224),
        interpolation=options.get("interpolation", "bicubic"), mean=mean, std=std,
    )
    samples = scan_image_folder(images) if images else read_image_list(image_list)
    world = launched_world()  # (rank, world size, local rank) under torchrun, else None
    run = extract_image_features if world is None else extract_distributed
    total = len(samples) if world is None else (lambda a, b: b - a)(*_rank_bounds(len(samples), world))
    with ui.progress(total, f"extracting {split}", unit="images") as advance:
        summary = run(
            store, split, samples, options["model"],
            checkpoint=options.get("checkpoint"),
            checkpoint_key=options.get("checkpoint_key"),
            strip_prefix=list(options.get("strip_prefix") or ()) or None,
            trust_checkpoint=bool(options.get("trust_checkpoint")),
            transform=transform,
            device=options.get("device", "auto"),
            batch_size=options.get("batch_size", 64),
            workers=options.get("workers", 4),
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
