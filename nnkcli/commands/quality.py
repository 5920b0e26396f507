"""``nnk quality``: label-free quality of a split's features (RankMe, α-ReQ, NNK interpolation error)."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import check_with, leave_one_out_k_option, settings_option
from nnkcli.evaluation.options import ScoringOptions, split_name
from nnkcli.output import Column, render
from nnkcli.settings import count, seed

COLUMNS = [
    Column("metric", justify="left"),
    Column("value", spec=".4g", ci="ci"),
    Column("better", justify="left"),
]


@click.command("quality")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option(
    "--split",
    default="val",
    show_default=True,
    metavar="NAME",
    callback=check_with(split_name),
    help="Split measured; each row is searched against the split's other rows.",
)
@leave_one_out_k_option
@click.option(
    "--queries",
    type=int,
    default=None,
    metavar="N",
    callback=check_with(count),
    help="Interpolate a seeded random sample of N rows [default: every row].",
)
@click.option(
    "--seed",
    "seed_",
    type=int,
    default=0,
    show_default=True,
    metavar="S",
    callback=check_with(seed),
    help="Seed of the --queries sample and of RankMe's sample (more than 25,600 rows).",
)
@settings_option(ScoringOptions, "threads")
@settings_option(ScoringOptions, "confidence")
@command_options
def quality(store, split, k_values, queries, seed_, threads, confidence, fmt):
    """Judge a split's features without labels: RankMe, alpha-ReQ and the NNK interpolation error.

    rankme (higher is better) is the effective rank of the features; alpha_req (closer to 1)
    the decay of the covariance's spectrum (needs d >= 100); nnk_interpolation_error (lower)
    how well each row is rebuilt from its NNK neighbors among the split's other rows. A
    labelled split adds the leave-one-out top-1 (%) of NNK and k-NN. See the docs' page
    "nnk quality" for what each means and where it misleads.

    \b
    Examples:
      nnk quality sample_data/fashion-mnist.h5
      nnk quality feats.h5 --split train --k 20 --queries 10000
      nnk quality feats.h5 --format json | jq '.summary'
    """
    from nnkcli.evaluation.quality import quality as run_quality

    ui = get_ui()
    k = k_values
    result = run_quality(
        store,
        split=split,
        k=k,
        queries=queries,
        seed=seed_,
        threads=threads,
        confidence=confidence,
        progress_factory=ui.progress,
    )
    doc = result.to_dict()
    render(doc, fmt=fmt, columns=COLUMNS, rows=table_rows(doc), title=title(doc), caption=caption(doc))


def table_rows(doc: dict) -> list[dict]:
    """One row per metric: its value, its interval where it has one, and which way is better."""
    from nnkcli.evaluation.quality import QUALITY_METRICS

    err = doc["nnk_interpolation_error"]
    rows = [
        {"metric": "rankme", "value": doc["rankme"]},
        {"metric": "alpha_req", "value": doc["alpha_req"]},
        {"metric": "nnk_interpolation_error", "value": err["mean"], "ci": err["ci"]},
        {"metric": "  median", "value": err["median"]},
        {"metric": "  q05", "value": err["q05"]},
        {"metric": "  q95", "value": err["q95"]},
    ]
    if doc["loo"] is not None:
        for method in ("nnk", "knn"):
            loo = doc["loo"][method]
            rows.append({"metric": f"loo_{method}_top1", "value": loo["top1"], "ci": loo["top1_ci"]})
    for row in rows:
        row["better"] = QUALITY_METRICS.get(row["metric"], "")
    return rows


def title(doc: dict) -> str:
    return f"{doc['store']}, split {doc['split']}, k={doc['k']}"


def caption(doc: dict) -> str:
    parts = [
        f"{doc['queries']} of {doc['n_rows']} rows interpolated",
        f"rankme on {doc['rankme_rows']} rows",
        f"{doc['timing']['total_s']:.2f} s",
    ]
    if doc["alpha_req"] is None:
        parts.append("alpha_req needs 100 eigenvalues above zero (d >= 100)")
    if doc["loo"] is None:
        parts.append("no labels: no leave-one-out top-1")
    return "; ".join(parts)
