"""``nnk history``: the evaluation history as a table, JSON, CSV or a plot."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.output import Column, render

logger = logging.getLogger("nnkcli")


def history_columns(methods) -> list[Column]:
    cols = [Column("step"), Column("source", justify="left"), Column("sha256", justify="left")]
    for m in methods:
        cols += [
            Column(f"{m}_top1", f"{m} top-1 %", ".2f"),
            Column(f"{m}_k", f"{m} k"),
            Column(f"{m}_delta_prev", "vs prev", "+.2f"),
            Column(f"{m}_delta_best", "vs best", "+.2f"),
        ]
    cols.append(Column("best", justify="left"))
    return cols


EPILOG = """\b
Examples:
  nnk history runs/history.jsonl
  nnk history runs/history.jsonl --plot runs/history.png
  nnk history runs/history.jsonl --format json | jq '.best.nnk'
  nnk history runs/history.jsonl --tensorboard runs/tb    # then: tensorboard --logdir runs/tb
\b
Rows are ordered by step (epoch, global step ... read from each checkpoint or its
file name), sources without a step after them by time. 'vs prev' is the change
from the row before, 'vs best' the distance to the best row, marked in 'best'.
Malformed lines are reported on stderr with their line number and skipped.
"""


@click.command(epilog=EPILOG)
@click.argument("history_path", metavar="HISTORY", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw top-1 over checkpoints for each method (.png, .svg or .pdf; needs matplotlib).")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Also write best top-1/top-5/k per method against the step as TensorBoard "
                                  "scalars (needs the tensorboard extra).")
@command_options
@click.pass_context
def history(ctx, history_path, plot_path, tensorboard_dir, fmt):
    """Show the evaluations recorded in HISTORY by nnk evaluate, one row per source."""
    from nnkcli.tracking.history import entry_methods, history_rows, order_entries, read_history

    ui = get_ui(ctx)
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import check_logdir

        check_logdir(tensorboard_dir)
    hist = read_history(history_path, missing_ok=False)
    for bad in hist.malformed:
        logger.warning(f"{history_path.name} {bad}; skipped")
    methods = entry_methods(hist.entries)
    rows = history_rows(hist.entries, methods)
    if plot_path is not None:
        from nnkcli.history_plot import plot_history

        plot_history(rows, plot_path, methods=methods, title=history_path.name)
        logger.info(f"plot written to {plot_path}")
    ordered = order_entries(hist.entries)
    tensorboard = None
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import write_history

        tensorboard = write_history(ordered, methods, tensorboard_dir)
        logger.info(f"{tensorboard['scalars']} scalars written to {tensorboard_dir}")
    best = {}
    for m in methods:
        marked = [(row, entry) for row, entry in zip(rows, ordered) if m in row["best"].split()]
        if marked:
            row, entry = marked[0]
            best[m] = {"source": entry.get("source"), "sha256": entry["sha256"], "step": row["step"],
                       "top1": row[f"{m}_top1"], "k": row[f"{m}_k"]}
    payload = {
        "history": str(history_path),
        "n_entries": len(rows),
        "methods": methods,
        "best": best,
        "rows": rows,
        "malformed": [{"line": b.line_number, "reason": b.reason} for b in hist.malformed],
    }
    if tensorboard is not None:
        payload["tensorboard"] = tensorboard
    caption = f"{len(rows)} source" + ("" if len(rows) == 1 else "s")
    if hist.malformed:
        caption += f", {len(hist.malformed)} malformed line{'' if len(hist.malformed) == 1 else 's'} skipped"
    render(payload, fmt=ui.fmt, columns=history_columns(methods), rows=rows, title=f"nnk history {history_path}",
           caption=caption)
