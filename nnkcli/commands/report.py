"""``nnk report``: linear probe | k-NN | NNK of one or more stores, with intervals and McNemar's tests."""

from __future__ import annotations

import click

from nnkcli.cli import format_option, get_ui, verbosity_options
from nnkcli.commands._options import k_option, settings_option
from nnkcli.commands._trackers import export_last, tracker_options
from nnkcli.commands.probe import probe_options
from nnkcli.evaluation.options import DataOptions, ScoringOptions
from nnkcli.output import FORMATS, Column, render

REPORT_FORMATS = (*FORMATS, "markdown", "latex")
REPORT_K = "10,20,50,100,200"


@click.command("report")
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@k_option(default=REPORT_K)
@probe_options
@settings_option(DataOptions, "train_split")
@settings_option(DataOptions, "query_split")
@settings_option(ScoringOptions, "select_queries")
@settings_option(ScoringOptions, "threads")
@settings_option(ScoringOptions, "confidence")
@click.option("--no-probe", is_flag=True, help="Leave out the linear probe (its column stays empty).")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Reuse the results saved in this folder and save new ones there (keyed by the splits' content "
    "and the parameters) [default: no cache].",
)
@tracker_options
@verbosity_options
@lambda f: format_option(f, REPORT_FORMATS)
def report(
    stores,
    k_values,
    probe_opts,
    train_split,
    query_split,
    select_queries,
    threads,
    confidence,
    no_probe,
    cache_dir,
    trackers,
    fmt,
):
    """The paper's table: linear probe | k-NN | NNK top-1 (%), one row per store.

    k-NN and NNK at each --k and at the k each selects by leave-one-out on train rows
    ('nnk sweep --select-on train'); the probe as 'nnk probe' (C chosen on held-out train
    rows). Each number has its Wilson interval (--confidence); the p values are McNemar's
    exact test of NNK at its selected k against k-NN at its selected k and against the
    probe. markdown and latex print the table for a README or a paper (\\input a tabular).
    --wandb/--mlflow log one run per store (the sweep's and the probe's numbers).

    \b
    Examples:
      nnk report ckpt_*.h5 --format markdown
      nnk report a.h5 b.h5 --k 10,20 --cache .nnk-cache --format latex > table.tex
      nnk report feats.h5 --no-probe --format json | jq '.rows[0].nnk.selected'
    """
    from nnkcli.evaluation.options import ScoringOptions as Scoring
    from nnkcli.tracking.report import report as run_report

    ui = get_ui()
    result = run_report(
        stores,
        k=k_values,
        options=Scoring(select_queries=select_queries, confidence=confidence),
        data=DataOptions(train_split=train_split, query_split=query_split),
        probe_options=probe_opts,
        linear=not no_probe,
        threads=threads,
        cache_dir=cache_dir,
        progress_factory=ui.progress,
    )
    doc = result.to_dict()
    columns, rows = table(doc)
    if fmt in ("markdown", "latex"):
        from nnkcli.commands._tables import latex_table, markdown_table

        click.echo(markdown_table(columns, rows) if fmt == "markdown" else latex_table(columns, rows), nl=False)
    else:
        cache = doc["cache"]
        caption = f"{cache['computed']} result(s) computed, {cache['reused']} reused from the cache"
        render(doc, fmt=fmt, columns=columns, rows=rows, caption=caption)
    export_last({"documents": result.tracked_documents}, trackers)


def table(doc: dict) -> tuple[list[Column], list[dict]]:
    """The columns and one flat row per store: each accuracy with its interval, then the p values."""
    ks = [str(k) for k in doc["k_values"]]
    columns = [Column("store", justify="left"), Column("linear", "linear", ".2f", ci="linear_ci")]
    for method, name in (("knn", "k-NN"), ("nnk", "NNK")):
        for k in ks:
            columns.append(Column(f"{method}@{k}", f"{name} {k}", ".2f", ci=f"{method}@{k}_ci"))
        columns.append(Column(f"{method}_selected", f"{name} sel.", ".2f", ci=f"{method}_selected_ci"))
        columns.append(Column(f"{method}_selected_k", f"{name} k"))
    columns += [Column("p_knn", "p NNK/k-NN", ".2g"), Column("p_linear", "p NNK/linear", ".2g")]
    rows = []
    for r in doc["rows"]:
        flat: dict = {"store": r["store"]}
        if r["linear"] is not None:
            flat["linear"], flat["linear_ci"] = r["linear"]["top1"], r["linear"]["top1_ci"]
        for method in ("knn", "nnk"):
            for k in ks:
                cell = r[method]["by_k"][k]
                flat[f"{method}@{k}"], flat[f"{method}@{k}_ci"] = cell["top1"], cell["top1_ci"]
            sel = r[method]["selected"]
            flat[f"{method}_selected"], flat[f"{method}_selected_ci"] = sel["top1"], sel["top1_ci"]
            flat[f"{method}_selected_k"] = sel["k"]
        flat["p_knn"] = r["mcnemar"]["nnk_vs_knn"]["p_value"]
        lin = r["mcnemar"]["nnk_vs_linear"]
        flat["p_linear"] = lin["p_value"] if lin is not None else None
        rows.append(flat)
    return columns, rows
