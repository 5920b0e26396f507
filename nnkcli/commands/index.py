"""``nnk index``: build and save the faiss index of a store split."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import check_with, option_bundle, settings_option, split_option
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.index import IndexParams
from nnkcli.output import Column, render
from nnkcli.settings import optional_count


def _parse_memory(ctx, param, value):
    if value is None:
        return None
    from nnkcli.errors import InputError
    from nnkcli.shards import parse_size

    try:
        return parse_size(value)
    except InputError as exc:
        raise click.BadParameter(f"{exc.message} ({exc.hint})") from None


def index_params_options(f):
    """The options of ``IndexParams``, generated from its fields; the command receives ``params``."""
    names = list(IndexParams.declarations())

    def build(kwargs):
        kwargs["params"] = IndexParams(**{name: kwargs.pop(name) for name in names})

    return option_bundle([settings_option(IndexParams, name) for name in names], build)(f)


@click.command("index")
@click.argument("store", type=click.Path(dir_okay=False))
@split_option("train_split", "--split")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Index file (default: beside STORE, <stem>.<train-split>.faiss).",
)
@index_params_options
@click.option(
    "--shards",
    "n_shards",
    type=int,
    default=None,
    metavar="M",
    callback=check_with(optional_count),
    help="Build M index files over contiguous row ranges (peak memory: one shard plus a query chunk).",
)
@click.option(
    "--max-memory",
    "max_memory",
    callback=_parse_memory,
    default=None,
    metavar="SIZE",
    help="Pick the number of shards so one shard plus a query chunk fits in SIZE (e.g. 8G).",
)
@settings_option(ScoringOptions, "threads")
@command_options
def index(store, train_split, out, params, n_shards, max_memory, threads, fmt):
    """Build the cosine-similarity index of a split and save it beside STORE.

    Features are L2-normalised and added in chunks (bounded memory). The index file
    records a fingerprint of the split's content: classify and sweep refuse an index
    whose split has changed since.

    \b
    Examples:
      nnk index feats.h5                         # exact, feats.train.faiss
      nnk index feats.h5 --type ivf --nlist 4096 --nprobe 64
      nnk index feats.h5 --type hnsw --out /fast/disk/feats.hnsw.faiss
      nnk index feats.h5 --shards 4              # 4 shard files + the manifest feats.train.faiss
      nnk index feats.h5 --max-memory 8G         # as many shards as 8 GiB needs
    """
    from nnkcli import shards
    from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET
    from nnkcli.index import default_index_path, index_store

    ui = get_ui()
    if n_shards is not None and max_memory is not None:
        raise click.UsageError("give --shards or --max-memory, not both")
    if n_shards is not None or max_memory is not None:
        summary = shards.index_store_sharded(
            store,
            split=train_split,
            out=out,
            params=params,
            n_shards=n_shards,
            max_memory=max_memory,
            chunk_bytes=CHUNK_MEMORY_BUDGET,
            threads=threads,
            progress_factory=ui.progress,
        )
    else:
        summary = index_store(
            store, split=train_split, out=out, params=params, threads=threads, progress_factory=ui.progress
        )
        # a single index replaced a sharded one at this path: its shard files are no longer used
        shards.remove_unreferenced(out if out is not None else default_index_path(store, train_split))
    columns = [
        Column("index", justify="left"),
        Column("split", justify="left"),
        Column("n"),
        Column("dim"),
        Column("type", justify="left"),
        Column("bytes"),
        Column("build_s", "build s", ".2f"),
    ]
    if "shards" in summary:
        columns.insert(5, Column("shards"))
    render(summary, fmt=fmt, columns=columns, rows=[summary])
