"""``nnk extract``: put features into a store, from arrays/dumps or (torch) from a model."""

from __future__ import annotations

import logging
import re
from typing import Any

import click
from click.core import ParameterSource

from nnkcli.cli import command_options, get_ui, lock_timeout_option
from nnkcli.commands._options import check_with
from nnkcli.commands.extract_images import IMAGE_OPTION_NAMES, image_options, run_image_extraction
from nnkcli.evaluation.options import split_name
from nnkcli.output import Column, render

logger = logging.getLogger("nnkcli")

_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ARRAY_OPTIONS = ("labels_path", "features_key", "labels_key", "class_names_path", "allow_gaps")

SUMMARY_COLUMNS = [
    Column("split", justify="left"),
    Column("n"),
    Column("dim"),
    Column("dtype", justify="left"),
    Column("n_classes", "classes"),
    Column("unlabelled"),
    Column("source", justify="left"),
]


def parse_meta(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``--meta key=value`` pairs as a dict (usage error on a malformed or repeated key)."""
    meta: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _META_KEY.match(key):
            raise click.BadParameter(f"expected KEY=VALUE with a plain-word key, got {item!r}", ctx, param)
        if key in meta:
            raise click.BadParameter(f"key {key!r} given twice", ctx, param)
        if key in _reserved_meta_keys():
            raise click.BadParameter(f"key {key!r} is reserved: nnkcli sets it", ctx, param)
        meta[key] = value
    return meta


def _reserved_meta_keys() -> set[str]:
    from nnkcli.storage.store import RESERVED_ATTRS

    return {*RESERVED_ATTRS, "nnk_format", "format_version"}


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _option_flag(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return "--" + name.replace("_", "-")


@click.command(
    epilog="""\b
Examples:
  nnk extract feats.h5 --split train --from train_feats.npy --labels train_labels.npy
  nnk extract feats.h5 --split val --from val.npz --meta run=exp42 --meta epoch=300
  nnk extract feats.h5 --split train --from dino_dump/        # trainfeat.pth + trainlabels.pth
  nnk extract feats.h5 --split val --from dino_dump/          # testfeat.pth + testlabels.pth
  nnk extract feats.h5 --split train --from vissl_out/ --layer heads
  nnk extract feats.h5 --split train --from lightly_out/embeddings.csv
  nnk extract feats.h5 --split train --from feats.safetensors --class-names labels.txt
  nnk extract feats.h5 --split val --from val.parquet --features-key emb --labels-key label
  nnk extract feats.h5 --split train --from clip_out/         # img_emb/*.npy + metadata/*.parquet
  nnk extract feats.h5 --split val --images imagenet/val --model torchvision:resnet50 --checkpoint ck.pth
  nnk extract feats.h5 --split val --images imagenet/val --model timm:vit_small_patch16_224 \\
      --checkpoint dino_deitsmall16_pretrain.pth --protocol dino
  nnk extract feats.h5 --split val --images imagenet/val --model timm:vit_small_patch14_dinov2 \\
      --checkpoint dinov2_vits14_pretrain.pth --protocol dinov2 --features cls+avgpool
  nnk extract feats.h5 --split val --images imagenet/val --model hf:dinov2-small/ --features cls
""",
)
@click.argument("store", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--split", required=True, metavar="NAME", callback=check_with(split_name), help="Split to write, e.g. train or val."
)
@click.option(
    "--from",
    "from_path",
    metavar="PATH",
    default=None,
    help="Features to import: .npy, .npz, lightly's embeddings.csv, .safetensors, .parquet (file or "
    "folder), an embedding-reader folder (.npy shards + parquet metadata), a DINO "
    "--dump_features folder/.pth, or a VISSL folder.",
)
@click.option(
    "--labels",
    "labels_path",
    metavar="PATH",
    default=None,
    help="Labels file (.npy, .npz, .txt one per line, .pth): integers or names, -1 = unlabelled.",
)
@click.option(
    "--features-key",
    metavar="K",
    default=None,
    help="Features in a .npz/.safetensors [features], parquet column [embedding], or embedding-reader "
    "sub-folder [img_emb].",
)
@click.option(
    "--labels-key",
    metavar="K",
    default=None,
    help="Labels in a .npz/.safetensors [labels], or parquet (metadata) column [label].",
)
@click.option(
    "--class-names",
    "class_names_path",
    metavar="FILE",
    default=None,
    help="Text file of class names, one per line: integer label i is named by line i+1.",
)
@click.option(
    "--allow-gaps", is_flag=True, help="VISSL: import even when dataset indices are missing (a rank's shards absent)."
)
@click.option("--overwrite", is_flag=True, help="Replace the split if the store already has it.")
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_meta,
    help="Provenance pair stored with the split (repeatable).",
)
@lock_timeout_option
@image_options
@command_options
@click.pass_context
def extract(
    ctx,
    store,
    split,
    from_path,
    labels_path,
    features_key,
    labels_key,
    layer,
    class_names_path,
    allow_gaps,
    overwrite,
    meta,
    fmt,
    lock_timeout,
    **image_opts,
):
    """Write features into split NAME of STORE (an HDF5 file, created if missing).

    From arrays or dumps (--from), or with a model from images (--images, needs the
    torch extra). Labels may be integers or class names; they are mapped to
    contiguous ids, kept consistent across the store's splits. Bad input (NaN/Inf,
    all-zero rows, wrong shapes) is refused and nothing is written. The store is
    replaced atomically: an interrupted run leaves the old store intact.
    """
    ui = get_ui(ctx)
    image_source = image_opts.get("images") or image_opts.get("image_list")
    _check_usage(ctx, from_path, image_source)
    if from_path:
        summary = _import_arrays(
            ui,
            store,
            split,
            from_path,
            labels_path,
            features_key,
            labels_key,
            layer,
            overwrite,
            meta,
            class_names_path,
            lock_timeout,
            allow_gaps,
        )
    else:
        summary = run_image_extraction(
            ctx,
            store=store,
            split=split,
            overwrite=overwrite,
            meta=meta,
            lock_timeout=lock_timeout,
            layer=layer,
            **image_opts,
        )
        if summary.pop("rank", 0) != 0:
            return  # under torchrun only rank 0 prints the assembled split's summary
    render_summary(summary, ui.fmt)


def _check_usage(ctx: click.Context, from_path: str | None, image_source: str | None) -> None:
    """Exactly one of --from and --images/--image-list, each with only its own options."""
    if from_path and image_source:
        raise click.UsageError("--from cannot be combined with --images/--image-list", ctx)
    if not from_path and not image_source:
        raise click.UsageError("give --from PATH (arrays or dumps) or --images DIR / --image-list FILE", ctx)
    foreign = IMAGE_OPTION_NAMES if from_path else _ARRAY_OPTIONS
    for name in foreign:
        if _given(ctx, name):
            where = "--images/--image-list" if from_path else "--from"
            raise click.UsageError(f"{_option_flag(ctx, name)} applies to {where} only", ctx)


def _import_arrays(
    ui,
    store,
    split,
    from_path,
    labels_path,
    features_key,
    labels_key,
    layer,
    overwrite,
    meta,
    class_names_path=None,
    lock_timeout=None,
    allow_gaps=False,
):
    from nnkcli.errors import InputError
    from nnkcli.extract import load_features
    from nnkcli.storage.checks import check_split_name
    from nnkcli.storage.store import write_split

    check_split_name(split)
    imported = load_features(
        from_path,
        split=split,
        labels_path=labels_path,
        features_key=features_key,
        labels_key=labels_key,
        layer=layer,
        class_names_path=class_names_path,
        allow_gaps=allow_gaps,
    )
    for key in meta:
        if key in imported.attrs:
            raise InputError(f"--meta key '{key}' is already set by the importer", hint="choose another key")
    features: Any = imported.features  # array-like (n, d): an array, a memmap, an h5py dataset or a lazy view
    n_rows = int(features.shape[0]) if len(features.shape) else 0
    with ui.progress(n_rows, f"writing {split}") as advance:
        summary = write_split(
            store,
            split,
            imported.features,
            imported.labels,
            ids=imported.ids,
            class_names=imported.class_names,
            source=imported.source,
            attrs={**imported.attrs, **meta},
            overwrite=overwrite,
            progress=advance,
            lock_timeout=lock_timeout,
        )
    return summary


def render_summary(summary: dict, fmt: str) -> None:
    """Render an extraction summary (array import or model extraction) as one row."""
    columns = [c for c in SUMMARY_COLUMNS if c.key in summary]
    title = f"Wrote split '{summary.get('split')}' to {summary.get('store')}" if "store" in summary else None
    render(summary, fmt=fmt, columns=columns, rows=[summary], title=title)
