"""``nnk audit``: which labels of a split its own neighbors do not support (leave-one-out NNK)."""

from __future__ import annotations

import logging

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import check_with, leave_one_out_k_option, settings_option
from nnkcli.evaluation.audit import DEFAULT_THRESHOLD, check_rate, check_threshold
from nnkcli.evaluation.options import ScoringOptions, split_name
from nnkcli.output import Column, render
from nnkcli.settings import seed

logger = logging.getLogger("nnkcli")

WORST_COLUMNS = [
    Column("row"),
    Column("id", justify="left"),
    Column("label", justify="left"),
    Column("reliability", spec=".3f"),
    Column("suggested_label", "NNK suggests", justify="left"),
    Column("suggested_weight", "weight", spec=".3f"),
    Column("knn_label", "kNN label", justify="left"),
    Column("knn_share", "kNN share", spec=".3f"),
]
CLASS_COLUMNS = [
    Column("class", justify="left"),
    Column("rows"),
    Column("flagged"),
    Column("noise_estimate", "noise estimate", spec=".3f"),
    Column("mean_reliability", "mean reliability", spec=".3f"),
]
INJECTED_COLUMNS = [Column("injected"), Column("injected_share", "injected share", spec=".3f")]
SELF_TEST_COLUMNS = [
    Column("method", justify="left"),
    Column("auroc", "AUROC", spec=".4f"),
    Column("precision_at_flipped", "precision@flipped", spec=".4f"),
    Column("flagged"),
    Column("flagged_precision", "flagged precision", spec=".4f"),
    Column("flagged_recall", "flagged recall", spec=".4f"),
]


@click.command("audit")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option(
    "--split",
    default="train",
    show_default=True,
    metavar="NAME",
    callback=check_with(split_name),
    help="The split whose labels are audited.",
)
@leave_one_out_k_option
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    callback=check_with(check_threshold),
    metavar="T",
    help="Flag a row when less than this share of its NNK weight is on its own label; in (0, 1].",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Write the audit table (CSV, least reliable first) to this file.",
)
@click.option("--all", "write_all", is_flag=True, help="Write every audited row to --out, not only the flagged ones.")
@click.option(
    "--inject-noise",
    type=float,
    default=None,
    callback=check_with(check_rate),
    metavar="RATE",
    help="Self-test: flip this share of the labels in memory (the store is not changed) and report how well "
    "the audit finds them.",
)
@click.option(
    "--noise-seed",
    type=int,
    default=0,
    show_default=True,
    metavar="S",
    callback=check_with(seed),
    help="Seed of --inject-noise.",
)
@settings_option(ScoringOptions, "threads")
@command_options
def audit(store, split, k_values, threshold, out, write_all, inject_noise, noise_seed, threads, fmt):
    """Audit the labels of a split: each row's NNK weight on its own label, leave-one-out.

    Every labelled row is scored against the other rows of the split; its reliability is the
    share of its NNK weight on neighbors with its label. Rows below --threshold are flagged and
    written to --out (every row with --all). Rows labelled -1 are not audited.

    \b
    Examples:
      nnk audit feats.h5 --out suspects.csv
      nnk audit feats.h5 --split train --k 50 --all --out audit.csv
      nnk audit feats.h5 --out suspects.csv --inject-noise 0.1 --noise-seed 1   # self-test
    """
    from nnkcli.evaluation.audit import audit as run_audit

    ui = get_ui()
    result = run_audit(
        store,
        split=split,
        k=k_values,
        threshold=threshold,
        csv_path=out,
        write_all=write_all,
        inject_noise=inject_noise,
        noise_seed=noise_seed,
        options=ScoringOptions(threads=threads),
        progress_factory=ui.progress,
    )
    doc = result.to_dict()
    columns = CLASS_COLUMNS + (INJECTED_COLUMNS if doc["self_test"] else [])
    if fmt != "table":
        render(doc, fmt=fmt, columns=columns, rows=doc["classes"])
        _written(doc, out)
        return
    render(doc, fmt=fmt, columns=WORST_COLUMNS, rows=doc["worst"], title=f"Least reliable rows of '{split}'")
    caption = f"{doc['flagged']} of {doc['audited']} labelled rows flagged (reliability < {threshold:g}, k={k_values})"
    if doc["unlabelled"]:
        caption += f"; {doc['unlabelled']} unlabelled rows not audited"
    render(doc, fmt=fmt, columns=columns, rows=doc["classes"], title="Per class", caption=caption)
    test = doc["self_test"]
    if test:
        rows = [{"method": method, **test[method]} for method in ("nnk", "knn")]
        caption = (
            f"{test['flipped']} of {doc['audited']} labels flipped in memory "
            f"(rate {test['rate']:g}, seed {test['seed']})"
        )
        render(doc, fmt=fmt, columns=SELF_TEST_COLUMNS, rows=rows, title="Self-test", caption=caption)
    _written(doc, out)


def _written(doc: dict, out: str) -> None:
    what = "every audited row" if doc["out"]["all"] else "the flagged rows"
    logger.info(f"{what} ({doc['out']['rows']}) written to {out}")
