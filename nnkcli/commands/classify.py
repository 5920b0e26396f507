"""``nnk classify``: NNK and weighted-kNN accuracy of a query split at one k."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import data_options, gate_options, scoring_options, shard_option
from nnkcli.commands._render import render_classification
from nnkcli.commands._trackers import exported, tracker_options


@click.command("classify")
@click.argument("store", type=click.Path(dir_okay=False))
@scoring_options(single_k="classify")
@data_options
@shard_option
@gate_options
@click.option("--per-class", is_flag=True, help="Add per-class top-1 accuracy.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write per-query neighbors, scores, top-5 and NNK weights to this HDF5 file "
    "(with --shard: the shard's partial result file for 'nnk merge').",
)
@tracker_options
@command_options
def classify(store, scoring, data, shard, per_class, out, trackers, min_top1, min_top5, gate_method, fmt):
    """Classify the query split by its k nearest training rows, with NNK and weighted kNN.

    Accuracies are in % (0-100). Queries labelled -1 are predicted but not scored.

    \b
    Examples:
      nnk classify feats.h5 --k 50
      nnk classify feats.h5 --k 20 --method knn --temperature 0.07
      nnk classify feats.h5 --format json --min-top1 70      # CI gate: exit 3 below 70 %
      nnk classify feats.h5 --min-top1 80 --gate-method nnk  # gate NNK only
      nnk classify feats.h5 --query-split train --exclude-self --out loo.h5
      nnk classify feats.h5 --shard 0/8 --out part-0.h5        # then: nnk merge part-*.h5
      nnk classify feats.h5 --backend torch --device cuda --fp16
      nnk classify feats.h5 --protocol nnk-paper        # the NNK paper's solver and top-5
      nnk classify feats.h5 --method knn --temperature 0.02,0.05,0.07,0.1
      nnk classify epoch_30.h5 --k 20 --wandb my-project   # a W&B run named "step 30"
    """
    from nnkcli.evaluation.classification import classify as run_classify
    from nnkcli.numerics.metrics import check_gate_method, check_gates

    ui = get_ui()
    data = data.replace(shard=shard)
    gate = min_top1 is not None or min_top5 is not None
    if gate:
        check_gate_method(gate_method, scoring.methods)
    doc = run_classify(
        store,
        scoring,
        data=data,
        per_class=per_class,
        predictions_path=out,
        gate_requested=gate,
        progress_factory=ui.progress,
    ).to_dict()
    rows = doc["results"]
    render_classification(doc, fmt, per_class=per_class)
    with exported(doc, trackers):  # last: a tracker that cannot be written loses no result
        check_gates(rows, min_top1=min_top1, min_top5=min_top5, gate_method=gate_method)
