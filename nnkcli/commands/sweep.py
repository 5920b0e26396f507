"""``nnk sweep``: accuracy versus k for NNK and weighted kNN from one search."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import data_options, gate_options, plot_option, scoring_options, shard_option
from nnkcli.output import Column, render


@click.command("sweep")
@click.argument("store", type=click.Path(dir_okay=False))
@scoring_options()
@data_options
@shard_option
@gate_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, metavar="PART.h5",
              help="Write the per-query predictions at every k as a partial result file for 'nnk merge' "
                   "(needed with --shard).")
@plot_option("plot", "Also draw top-1 vs k to this .png/.svg/.pdf (needs the plot extra).")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write top-1/top-5 vs k (run DIR/sweep_step_N) and the best k at step N as TensorBoard "
                   "scalars (needs the tensorboard extra and --step).")
@click.option("--step", type=click.IntRange(min=0), default=None, metavar="N",
              help="Training step (epoch) of these features, for --tensorboard.")
@command_options
def sweep(store, scoring, data, shard, out, plot, tensorboard_dir, step, min_top1, min_top5, gate_method, fmt):
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
      nnk sweep feats.h5 --k 10..200 --format csv > sweep.csv
      nnk sweep feats.h5 --format json --min-top1 70 | jq .best
      nnk sweep feats.h5 --k 10..200 --tensorboard runs/tb --step 30
      nnk sweep feats.h5 --k 10..200 --shard 3/8 --out part-3.h5   # then: nnk merge part-*.h5
      nnk sweep feats.h5 --select-on train --temperature 0.02,0.05,0.07,0.1
      nnk sweep feats.h5 --protocol dino
    """
    from nnkcli.numerics.metrics import check_gate_method, check_gates
    from nnkcli.evaluation.sweeps import sweep as run_sweep

    ui = get_ui()
    data = data.replace(shard=shard)
    if plot is not None:
        from nnkcli.plots import check_plot_path

        check_plot_path(plot)  # fail before the long computation, not after
    if (tensorboard_dir is None) != (step is None):
        raise click.UsageError("--tensorboard and --step go together: give both or neither")
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import check_logdir

        check_logdir(tensorboard_dir)
    gate = min_top1 is not None or min_top5 is not None
    if gate:
        check_gate_method(gate_method, scoring.methods)
    result = run_sweep(store, scoring, data=data, gate_requested=gate, progress_factory=ui.progress,
                       partial_path=out)
    doc = result.to_dict()
    if plot is not None:
        from nnkcli.plots import plot_sweep

        plot_sweep(doc, plot)
        doc["plot"] = str(plot)
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import write_sweep

        doc["tensorboard"] = write_sweep(doc, tensorboard_dir, step)
    render(doc, fmt=fmt, **_table(doc, fmt))
    gated = doc["selected"] if "selected" in doc else doc["best"]  # --select-on: the choice made on train
    check_gates([{"method": m, **b} for m, b in gated.items()], min_top1=min_top1, min_top5=min_top5,
                gate_method=gate_method)


def _is(entry: dict | None, row: dict) -> bool:
    """Does the best/selected ``entry`` of a method name this result ``row``'s (k, T)?"""
    return bool(entry) and entry["k"] == row["k"] and entry.get("temperature") == row.get("temperature")


def _table(doc: dict, fmt: str) -> dict:
    methods = doc["parameters"]["methods"]
    best, selected = doc["best"], doc.get("selected", {})
    temps = doc["parameters"].get("temperature_grid") or [doc["parameters"]["temperature"]]
    grid = len(temps) > 1

    def mark(r) -> str:
        b = best.get(r["method"], {})
        if _is(b, r):
            return "*"
        same_t = b.get("temperature") == r.get("temperature")
        return "~" if same_t and r["k"] in b.get("tied_k", ()) else ""

    if fmt == "csv":  # one row per (method, k[, T])
        rows = [dict(r, best=(mark(r) == "*"), tied_with_best=(mark(r) == "~"),
                     selected=_is(selected.get(r["method"]), r)) for r in doc["results"]]
        columns = [Column("method"), Column("k")] + ([Column("temperature")] if grid else []) + [
            Column("top1", ci="top1_ci"), Column("top5", ci="top5_ci"),
            Column("balanced_accuracy", ci="balanced_accuracy_ci"), Column("n_queries"),
            Column("support_mean"), Column("best"), Column("tied_with_best")]
        if selected:
            columns.append(Column("selected"))
        return {"columns": columns, "rows": rows}
    # table: one row per k, methods (and kNN temperatures) side by side; * = best on the
    # query split, ~ = tied with it, sel = chosen on train by leave-one-out
    by_k: dict = {}
    for r in doc["results"]:
        row = by_k.setdefault(r["k"], {"k": r["k"]})
        name = f"knn@{r['temperature']:g}" if (grid and r["method"] == "knn") else r["method"]
        lo, hi = r.get("top1_ci") or (None, None)
        ci = f" ±{(hi - lo) / 2:.2f}" if lo is not None and hi is not None and lo == lo and hi == hi else ""
        marks = (mark(r) or " ") + (" sel" if _is(selected.get(r["method"]), r) else "")
        row[f"{name}_top1"] = f"{r['top1']:.2f}{ci}{marks}" if r["top1"] == r["top1"] else "-" + marks.rstrip()
        row[f"{name}_top5"] = r["top5"]
        row[f"{name}_top5_ci"] = r.get("top5_ci")
        if r["method"] == "nnk":
            row["support"] = r.get("support_mean")
    columns = [Column("k")]
    for m in methods:
        for name in ([f"knn@{t:g}" for t in temps] if (m == "knn" and grid) else [m]):
            label = name.replace("knn@", "knn T=")
            columns += [Column(f"{name}_top1", f"{label} top-1 %"),
                        Column(f"{name}_top5", f"{label} top-5 %", ".2f", ci=f"{name}_top5_ci")]
    if "nnk" in methods:
        columns.append(Column("support", "nnk support", ".1f"))
    t = doc["timing"]
    level = f"{100 * doc['parameters'].get('confidence', 0.95):g} %"
    alpha = next((b["alpha"] for b in best.values() if "alpha" in b), None)
    caption = f"± half-width of the {level} interval; * best k per method on the query split (optimistic)"
    if alpha is not None:
        caption += (f"; ~ not significantly below the best (McNemar p >= {alpha:g}); smallest such k: "
                    + ", ".join(f"{m} k={b['recommended_k']}" for m, b in best.items()))
    if selected:
        s = doc["selection"]
        caption += (f"\nsel = chosen by leave-one-out top-1 on {s['queries']} rows of '{s['split']}': "
                    + ", ".join(f"{m} k={e['k']}" + (f" T={e['temperature']:g}" if "temperature" in e else "")
                                for m, e in selected.items()))
    caption += (f"\n{doc['n_queries']} queries vs {doc['n_train']} train rows; "
                f"search {t['search_s']:.2f}s, total {t['total_s']:.2f}s")
    nnk_rows = [r for r in doc["results"] if r["method"] == "nnk" and "kkt_failure_fraction" in r]
    if nnk_rows:
        worst = max(nnk_rows, key=lambda r: r["kkt_failure_fraction"])
        caption += (f"\npruning solver: up to {100 * worst['kkt_failure_fraction']:.1f} % of queries fail the exact "
                    f"KKT certificate (k={worst['k']}, mean objective gap {worst['objective_gap_mean']:.3g})")
    return {"columns": columns, "rows": list(by_k.values()), "caption": caption}
