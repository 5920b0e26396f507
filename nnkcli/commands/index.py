"""``nnk index``: build and save the faiss index of a store split."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import check_with, split_option
from nnkcli.evaluation.options import optional_count
from nnkcli.output import Column, render


def _parse_memory(ctx, param, value):
    if value is None:
        return None
    from nnkcli.errors import InputError
    from nnkcli.shards import parse_size

    try:
        return parse_size(value)
    except InputError as exc:
        raise click.BadParameter(f"{exc.message} ({exc.hint})") from None


COUNT = check_with(optional_count)  # None (automatic) or >= 1


@click.command("index")
@click.argument("store", type=click.Path(dir_okay=False))
@split_option("--train-split", "train",
              "Split to index: the train split that classify/sweep search (--split is the old name).", "--split")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Index file (default: beside STORE, <stem>.<train-split>.faiss).")
@click.option("--type", "index_type", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat",
              show_default=True, help="flat is exact; ivf and hnsw are approximate, for large stores.")
@click.option("--nlist", type=int, default=None, metavar="N", callback=COUNT,
              help="ivf: number of cells (default ~ 4*sqrt(n)).")
@click.option("--nprobe", type=int, default=None, metavar="N", callback=COUNT,
              help="ivf: cells searched per query (default nlist/16, >= 8).")
@click.option("--hnsw-m", type=int, metavar="N", callback=COUNT, default=32, show_default=True,
              help="hnsw: graph degree.")
@click.option("--ef-search", type=int, default=None, metavar="N", callback=COUNT,
              help="hnsw: search depth (default max(64, k)).")
@click.option("--ef-construction", type=int, metavar="N", callback=COUNT, default=80, show_default=True,
              help="hnsw: build depth.")
@click.option("--shards", "n_shards", type=int, default=None, metavar="M", callback=COUNT,
              help="Build M index files over contiguous row ranges (peak memory: one shard plus a query chunk).")
@click.option("--max-memory", "max_memory", callback=_parse_memory, default=None, metavar="SIZE",
              help="Pick the number of shards so one shard plus a query chunk fits in SIZE (e.g. 8G).")
@click.option("--threads", type=int, default=None, metavar="N", callback=COUNT,
              help="Threads for building (default: all cores).")
@command_options
def index(store, train_split, out, index_type, nlist, nprobe, hnsw_m, ef_search, ef_construction, n_shards, max_memory,
          threads, fmt):
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
    from nnkcli.index import IndexParams, default_index_path, index_store

    ui = get_ui()
    params = IndexParams(index_type=index_type, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                         ef_search=ef_search, ef_construction=ef_construction)
    if n_shards is not None and max_memory is not None:
        raise click.UsageError("give --shards or --max-memory, not both")
    if n_shards is not None or max_memory is not None:
        summary = shards.index_store_sharded(
            store, split=train_split, out=out, params=params, n_shards=n_shards, max_memory=max_memory,
            chunk_bytes=CHUNK_MEMORY_BUDGET, threads=threads, progress_factory=ui.progress,
        )
    else:
        summary = index_store(store, split=train_split, out=out, params=params, threads=threads,
                              progress_factory=ui.progress)
        # a single index replaced a sharded one at this path: its shard files are no longer used
        shards.remove_unreferenced(out if out is not None else default_index_path(store, train_split))
    columns = [Column("index", justify="left"), Column("split", justify="left"), Column("n"), Column("dim"),
               Column("type", justify="left"), Column("bytes"), Column("build_s", "build s", ".2f")]
    if "shards" in summary:
        columns.insert(5, Column("shards"))
    render(summary, fmt=fmt, columns=columns, rows=[summary])
