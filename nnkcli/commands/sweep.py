"""``nnk sweep``: accuracy versus k for NNK and weighted kNN from one search."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._evaluation import EVAL_KWARGS, evaluation_options
from nnkcli.errors import InputError
from nnkcli.output import Column, render


def _k_spec(ctx, param, value):
    from nnkcli.evaluation.sweeps import parse_k_spec

    try:
        return parse_k_spec(value)
    except InputError as exc:
        raise click.BadParameter(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


@click.command("sweep")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--k", "k_values", default="10..200", show_default=True, callback=_k_spec, metavar="SPEC",
              help="k values: 10..200 (10, 20, ..., 200), 1..100:5, 10,20,50 or mixes like 1,5,10..200:10.")
@evaluation_options
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw top-1 vs k to this .png/.svg/.pdf (needs the plot extra).")
@command_options
def sweep(store, k_values, plot, method, min_top1, min_top5, fmt, **kwargs):
    """Top-1/top-5 of NNK and weighted kNN for many k, from one neighbour search.

    Each query chunk is searched once at the largest k; smaller k use the leading
    neighbours, so a 20-value sweep costs about one classify at the largest k.
    The best k of each method is marked; --min-top1/--min-top5 gate the best k.

    \b
    Examples:
      nnk sweep feats.h5 --k 10..200
      nnk sweep feats.h5 --k 1,5,10..200:10 --plot sweep.png
      nnk sweep feats.h5 --k 10..200 --format csv > sweep.csv
      nnk sweep feats.h5 --format json --min-top1 70 | jq .best
    """
    from nnkcli.numerics.metrics import check_gates
    from nnkcli.evaluation.sweeps import sweep as run_sweep

    ui = get_ui()
    if plot is not None:
        from nnkcli.plots import check_plot_path

        check_plot_path(plot)  # fail before the long computation, not after
    gate = min_top1 is not None or min_top5 is not None
    result = run_sweep(store, k_values=k_values, methods=method, gate_requested=gate,
                       progress_factory=ui.progress, **{key: kwargs[key] for key in EVAL_KWARGS})
    doc = result.to_dict()
    if plot is not None:
        from nnkcli.plots import plot_sweep

        plot_sweep(doc, plot)
        doc["plot"] = str(plot)
    render(doc, fmt=fmt, **_table(doc, fmt))
    best_rows = [{"method": m, **b} for m, b in doc["best"].items()]
    check_gates(best_rows, min_top1=min_top1, min_top5=min_top5)


def _table(doc: dict, fmt: str) -> dict:
    methods = doc["parameters"]["methods"]
    best = doc["best"]
    if fmt == "csv":  # one row per (method, k)
        rows = [dict(r, best=(best.get(r["method"], {}).get("k") == r["k"])) for r in doc["results"]]
        columns = [Column(c) for c in ("method", "k", "top1", "top5", "balanced_accuracy", "n_queries",
                                       "support_mean", "best")]
        return {"columns": columns, "rows": rows}
    # table: one row per k, methods side by side, the best k of each marked with *
    by_k: dict = {}
    for r in doc["results"]:
        row = by_k.setdefault(r["k"], {"k": r["k"]})
        mark = "*" if best.get(r["method"], {}).get("k") == r["k"] else ""
        row[f"{r['method']}_top1"] = f"{r['top1']:.2f}{mark}" if r["top1"] == r["top1"] else "-"
        row[f"{r['method']}_top5"] = r["top5"]
        if r["method"] == "nnk":
            row["support"] = r.get("support_mean")
    columns = [Column("k")]
    for m in methods:
        columns += [Column(f"{m}_top1", f"{m} top-1 %"), Column(f"{m}_top5", f"{m} top-5 %", ".2f")]
    if "nnk" in methods:
        columns.append(Column("support", "nnk support", ".1f"))
    t = doc["timing"]
    caption = (f"* best k per method; {doc['n_queries']} queries vs {doc['n_train']} train rows; "
               f"search {t['search_s']:.2f}s, total {t['total_s']:.2f}s")
    return {"columns": columns, "rows": list(by_k.values()), "caption": caption}
