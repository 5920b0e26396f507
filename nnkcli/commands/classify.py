"""``nnk classify``: NNK and weighted-kNN accuracy of a query split at one k."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import data_options, gate_options, scoring_options, shard_option
from nnkcli.commands._results import result_columns
from nnkcli.output import Column, render


@click.command("classify")
@click.argument("store", type=click.Path(dir_okay=False))
@scoring_options(single_k="classify")
@data_options
@shard_option
@gate_options
@click.option("--per-class", is_flag=True, help="Add per-class top-1 accuracy.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write per-query neighbors, scores, top-5 and NNK weights to this HDF5 file "
                   "(with --shard: the shard's partial result file for 'nnk merge').")
@command_options
def classify(store, scoring, data, shard, per_class, out, min_top1, min_top5, gate_method, fmt):
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
    """
    from nnkcli.evaluation.classification import classify as run_classify
    from nnkcli.numerics.metrics import check_gate_method, check_gates

    ui = get_ui()
    data = data.replace(shard=shard)
    gate = min_top1 is not None or min_top5 is not None
    if gate:
        check_gate_method(gate_method, scoring.methods)
    doc = run_classify(store, scoring, data=data, per_class=per_class, predictions_path=out, gate_requested=gate,
                       progress_factory=ui.progress)
    rows = doc["results"]
    caption = _caption(doc)
    if per_class and fmt != "json":
        _render_per_class(doc, fmt)
    else:
        render(doc, fmt=fmt, columns=result_columns("nnk" in [r["method"] for r in rows]), rows=rows,
               caption=caption)
    check_gates(rows, min_top1=min_top1, min_top5=min_top5, gate_method=gate_method)


def _caption(doc: dict) -> str:
    t = doc["timing"]
    parts = [f"{doc['n_queries']} queries vs {doc['n_train']} train rows",
             f"search {t['search_s']:.2f}s"]
    if "nnk_s" in t and any(r["method"] == "nnk" for r in doc["results"]):
        parts.append(f"nnk {t['nnk_s']:.2f}s")
    for r in doc["results"]:
        if "kkt_failure_fraction" in r:
            parts.append(f"pruning solver: {100 * r['kkt_failure_fraction']:.1f}% of queries fail the exact KKT "
                         f"certificate, mean objective gap {r['objective_gap_mean']:.3g}")
    if doc.get("n_unlabelled"):
        parts.append(f"{doc['n_unlabelled']} unlabelled queries not scored")
    return "; ".join(parts)


def _render_per_class(doc: dict, fmt: str) -> None:
    """One row per (method, class) after the summary rows: table and CSV."""
    rows = []
    for r in doc["results"]:
        rows.append({"method": r["method"], "k": r["k"], "class": "(all)", "n": r["n_queries"], "top1": r["top1"],
                     "top1_ci": r["top1_ci"], "top5": r["top5"], "top5_ci": r["top5_ci"],
                     "balanced_accuracy": r["balanced_accuracy"], "balanced_accuracy_ci": r["balanced_accuracy_ci"]})
        for name, pc in r.get("per_class", {}).items():
            rows.append({"method": r["method"], "k": r["k"], "class": name, "n": pc["n"], "top1": pc["top1"],
                         "top1_ci": pc["top1_ci"]})
    columns = [Column("method", justify="left"), Column("k"), Column("class", justify="left"), Column("n"),
               Column("top1", "top-1 %", ".2f", ci="top1_ci"), Column("top5", "top-5 %", ".2f", ci="top5_ci"),
               Column("balanced_accuracy", "balanced %", ".2f", ci="balanced_accuracy_ci")]
    render(doc, fmt=fmt, columns=columns, rows=rows, caption=_caption(doc))
