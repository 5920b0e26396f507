"""``nnk plot``: saved sweep documents (checkpoints, stores) drawn on one axes."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from nnkcli.cli import get_ui, verbosity_options
from nnkcli.commands._options import _plot_suffix, title_option

logger = logging.getLogger("nnkcli")


@click.command("plot")
@click.argument("documents", metavar="SWEEP.json...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    callback=_plot_suffix,
    help="The figure to write: .png, .svg or .pdf (text stays text in .svg and .pdf).",
)
@title_option
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME",
    help="Name of each document in the legend, once per document in order [default: its store's file name].",
)
@verbosity_options
def plot(documents, out, title, labels):
    """Top-1 vs k of saved sweeps (nnk sweep ... --format json) on one axes.

    One line per document, method and temperature, each document named by its
    store's file name (or --label); the best k on the query split is ringed
    (optimistic) and the k selected on train (--select-on train) marked with a
    diamond, as in nnk sweep --plot.

    \b
    Examples:
      nnk sweep ep10.h5 --format json > ep10.json
      nnk sweep ep20.h5 --format json > ep20.json
      nnk plot ep10.json ep20.json --out sweeps.png
      nnk plot ep10.json ep20.json --out sweeps.pdf --label "epoch 10" --label "epoch 20"
      nnk plot ep*.json --out sweeps.svg --title "ViT-S/16 on ImageNet-100: val"
    """
    from nnkcli.plots import check_plot_path, plot_sweep_files

    get_ui()
    if labels and len(labels) != len(documents):
        raise click.BadParameter(
            f"give one --label per document: {len(labels)} for {len(documents)} documents",
            param_hint="'--label'",
        )
    check_plot_path(out)
    plot_sweep_files(documents, out, labels=labels or None, title=title)
    n = len(documents)
    logger.info(f"plot of {n} sweep{'' if n == 1 else 's'} written to {out}")
