"""Options and rendering shared by ``classify`` and ``sweep`` (and ``evaluate``)."""

from __future__ import annotations

import click

from nnkcli.output import Column


def evaluation_options(f):
    """Which splits/index to use and how to score: the options classify and sweep share."""
    opts = [
        click.option("--train-split", default="train", show_default=True, help="Split searched for neighbours."),
        click.option("--query-split", default="val", show_default=True, help="Split whose rows are classified."),
        click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
                     help="Saved index (default: STORE's <stem>.<train-split>.faiss if present, else built in memory)."),
        click.option("--rebuild-index", is_flag=True,
                     help="Rebuild (and save) a stale or damaged saved index instead of refusing it."),
        # plain strings, checked by the core: an unknown method or kernel is a data/user
        # error (exit 1, with a hint), like every other bad value of these commands
        click.option("--method", default="both", show_default=True, metavar="both|nnk|knn",
                     help="Which classifiers to run."),
        click.option("--kernel", default="cosine", show_default=True, metavar="cosine|gaussian",
                     help="NNK kernel: (1+cos)/2, or exp(-d^2/2s^2) with s = k-th neighbour distance / 3."),
        click.option("--temperature", type=float, default=0.07, show_default=True,
                     help="kNN weights exp(similarity / T), as DINO."),
        click.option("--weighting", default="exp", show_default=True, metavar="exp|similarity|uniform",
                     help="kNN vote weights: exp(s/T) as DINO, s, or 1."),
        click.option("--chunk-size", type=int, default=None,
                     help="Queries per chunk (default: sized to a 512 MiB working-memory budget)."),
        click.option("--threads", type=int, default=None, help="Threads for the search (default: all cores)."),
        click.option("--exclude-self", is_flag=True,
                     help="Leave-one-out: skip each query's own row (query split = train split)."),
        click.option("--min-top1", type=float, default=None, metavar="PCT",
                     help="Exit with code 3 when a method's top-1 (%) is below PCT."),
        click.option("--min-top5", type=float, default=None, metavar="PCT",
                     help="Exit with code 3 when a method's top-5 (%) is below PCT."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


EVAL_KWARGS = ("train_split", "query_split", "index_path", "rebuild_index", "kernel", "temperature",
               "weighting", "chunk_size", "threads", "exclude_self")


def result_columns(include_support: bool = True) -> list[Column]:
    cols = [
        Column("method", justify="left"),
        Column("k"),
        Column("top1", "top-1 %", ".2f"),
        Column("top5", "top-5 %", ".2f"),
        Column("balanced_accuracy", "balanced %", ".2f"),
        Column("n_queries", "queries"),
    ]
    if include_support:
        cols.append(Column("support_mean", "nnk support", ".1f"))
    return cols
