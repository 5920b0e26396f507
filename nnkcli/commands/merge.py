"""``nnk merge``: one result document from the partial result files of a sharded classify/sweep."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import gate_options
from nnkcli.commands._render import render_classification, render_sweep


@click.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="ALL.h5",
    help="Also write every query's predictions as one partial result file (shard 0/1).",
)
@gate_options
@command_options
def merge(parts, out, min_top1, min_top5, gate_method, fmt):
    """Merge the partial result files of 'classify/sweep --shard I/N --out PART.h5'.

    The parts must come from the same store, index and options and cover the query
    split exactly once (else exit 1, naming the missing or repeated shard). The
    result -- accuracies, intervals, per-class rows, the sweep table, the best and
    recommended k -- is that of one unsharded run; only the timing is summed.

    \b
    Examples:
      nnk merge part-*.h5
      nnk merge part-*.h5 --out all.h5 --format json --min-top1 70
    """
    from nnkcli.evaluation.merging import merge_parts
    from nnkcli.numerics.metrics import check_gates

    get_ui()
    doc = merge_parts(parts, out=out).to_dict()
    if "best" in doc:  # a sweep
        render_sweep(doc, fmt)
        rows = [{"method": m, **b} for m, b in doc["best"].items()]
    else:
        rows = doc["results"]
        render_classification(doc, fmt, per_class=any("per_class" in r for r in rows))
    check_gates(rows, min_top1=min_top1, min_top5=min_top5, gate_method=gate_method)
