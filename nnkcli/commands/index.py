"""``nnk index``: build and save the faiss index of a store split."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.output import Column, render


@click.command("index")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True, help="Split to index.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Index file (default: beside STORE, <stem>.<split>.faiss).")
@click.option("--type", "index_type", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat",
              show_default=True, help="flat is exact; ivf and hnsw are approximate, for large stores.")
@click.option("--nlist", type=int, default=None, help="ivf: number of cells (default ~ 4*sqrt(n)).")
@click.option("--nprobe", type=int, default=None, help="ivf: cells searched per query (default nlist/16, >= 8).")
@click.option("--hnsw-m", type=int, default=32, show_default=True, help="hnsw: graph degree.")
@click.option("--ef-search", type=int, default=None, help="hnsw: search depth (default max(64, k)).")
@click.option("--ef-construction", type=int, default=80, show_default=True, help="hnsw: build depth.")
@click.option("--threads", type=int, default=None, help="Threads for building (default: all cores).")
@command_options
def index(store, split, out, index_type, nlist, nprobe, hnsw_m, ef_search, ef_construction, threads, fmt):
    """Build the cosine-similarity index of a split and save it beside STORE.

    Features are L2-normalised and added in chunks (bounded memory). The index file
    records a fingerprint of the split's content: classify and sweep refuse an index
    whose split has changed since.

    \b
    Examples:
      nnk index feats.h5                         # exact, feats.train.faiss
      nnk index feats.h5 --type ivf --nlist 4096 --nprobe 64
      nnk index feats.h5 --type hnsw --out /fast/disk/feats.hnsw.faiss
    """
    from nnkcli.index import IndexParams, index_store

    ui = get_ui()
    params = IndexParams(index_type=index_type, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                         ef_search=ef_search, ef_construction=ef_construction)
    summary = index_store(store, split=split, out=out, params=params, threads=threads,
                          progress_factory=ui.progress)
    columns = [Column("index", justify="left"), Column("split", justify="left"), Column("n"), Column("dim"),
               Column("type", justify="left"), Column("bytes"), Column("build_s", "build s", ".2f")]
    render(summary, fmt=fmt, columns=columns, rows=[summary])
