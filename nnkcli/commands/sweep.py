"""``nnk sweep``: accuracy versus k for NNK and weighted kNN from one search."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import (
    data_options,
    gate_options,
    plot_option,
    scoring_options,
    shard_option,
    title_option,
)
from nnkcli.commands._render import render_sweep
from nnkcli.commands._trackers import exported, tracker_options


@click.command("sweep")
@click.argument("store", type=click.Path(dir_okay=False))
@scoring_options()
@data_options
@shard_option
@gate_options
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PART.h5",
    help="Write the per-query predictions at every k as a partial result file for 'nnk merge' (needed with --shard).",
)
@plot_option(
    "plot",
    "Also draw top-1 vs k to this .png/.svg/.pdf: a line per method and temperature, the best k and the k "
    "selected on train marked (needs the plot extra).",
)
@title_option
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Also write top-1/top-5 vs k (run DIR/sweep_step_N) and the best k at step N as TensorBoard "
    "scalars (needs the tensorboard extra and --step).",
)
@click.option(
    "--step",
    type=click.IntRange(min=0, max=2**63 - 1),  # TensorBoard stores an int64
    default=None,
    metavar="N",
    help="Training step (epoch) of these features, for --tensorboard, --wandb and --mlflow "
    "[default for these two: read from the store's file name].",
)
@tracker_options
@command_options
def sweep(
    store, scoring, data, shard, out, plot, title, tensorboard_dir, step, trackers, min_top1, min_top5, gate_method, fmt
):
    """Top-1/top-5 of NNK and weighted kNN for many k, from one neighbor search.

    Each query chunk is searched once at the largest k; smaller k use the leading
    neighbors, so a 20-value sweep costs about one classify at the largest k.
    The best k of each method on the query split is marked * (optimistic: chosen on
    the split it reports), and every k whose top-1 is not significantly below the
    best's (McNemar's exact test on the same queries, p >= --alpha) is marked ~.
    With --select-on train, the k (and T) chosen by leave-one-out on train rows is
    marked "sel" and is what --min-top1/--min-top5 gate (else the best k).

    \b
    Examples:
      nnk sweep feats.h5 --k 10..200
      nnk sweep feats.h5 --k 1,5,10..200:10 --plot sweep.png
      nnk sweep feats.h5 --select-on train --plot sweep.pdf --title "ViT-S/16, epoch 100"
      nnk sweep feats.h5 --k 10..200 --format csv > sweep.csv
      nnk sweep feats.h5 --format json --min-top1 70 | jq .best
      nnk sweep feats.h5 --k 10..200 --tensorboard runs/tb --step 30
      nnk sweep feats.h5 --k 10..200 --wandb my-project --step 30
      nnk sweep feats.h5 --k 10..200 --mlflow file:./mlruns --step 30
      nnk sweep feats.h5 --k 10..200 --shard 3/8 --out part-3.h5   # then: nnk merge part-*.h5
      nnk sweep feats.h5 --select-on train --temperature 0.02,0.05,0.07,0.1
      nnk sweep feats.h5 --protocol dino
    """
    from nnkcli.evaluation.sweeps import sweep as run_sweep
    from nnkcli.numerics.metrics import check_gate_method, check_gates

    ui = get_ui()
    data = data.replace(shard=shard)
    if plot is not None:
        from nnkcli.plots import check_plot_path

        check_plot_path(plot)  # fail before the long computation, not after
    if title is not None and plot is None:
        raise click.UsageError("--title is the title of the --plot figure: give --plot too")
    if (tensorboard_dir is None) != (step is None) and not (trackers and tensorboard_dir is None):
        raise click.UsageError(
            "--tensorboard and --step go together: give both or neither (--step also serves --wandb and --mlflow)"
        )
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import check_logdir

        check_logdir(tensorboard_dir)
    gate = min_top1 is not None or min_top5 is not None
    if gate:
        check_gate_method(gate_method, scoring.methods)
    result = run_sweep(store, scoring, data=data, gate_requested=gate, progress_factory=ui.progress, partial_path=out)
    doc = result.to_dict()
    if plot is not None:
        from nnkcli.plots import plot_sweep

        plot_sweep(doc, plot, title=title)
        doc["plot"] = str(plot)
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import write_sweep

        doc["tensorboard"] = write_sweep(doc, tensorboard_dir, step)
    render_sweep(doc, fmt)
    gated = doc["selected"] if "selected" in doc else doc["best"]  # --select-on: the choice made on train
    with exported(doc, trackers, step=step):  # last: a tracker that cannot be written loses no result
        check_gates(
            [{"method": m, **b} for m, b in gated.items()],
            min_top1=min_top1,
            min_top5=min_top5,
            gate_method=gate_method,
        )
