"""``nnk history``: the evaluation history as a table, JSON, CSV or a plot."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import plot_option, title_option
from nnkcli.commands._render import quality_columns
from nnkcli.commands._trackers import export_last, tracker_options
from nnkcli.output import Column, render

logger = logging.getLogger("nnkcli")


def history_columns(methods, quality_metrics=()) -> list[Column]:
    cols = [Column("step"), Column("source", justify="left"), Column("sha256", justify="left")]
    for m in methods:
        cols += [
            Column(f"{m}_top1", f"{m} top-1 %", ".2f", ci=f"{m}_top1_ci", group=m),
            Column(f"{m}_k", f"{m} k", group=m),
            Column(f"{m}_delta_prev", "vs prev", "+.2f", group=m),
            Column(f"{m}_delta_best", "vs best", "+.2f", group=m),
        ]
    cols += quality_columns(quality_metrics)
    cols.append(Column("best", justify="left"))
    return cols


EPILOG = """\b
Examples:
  nnk history runs/history.jsonl
  nnk history runs/history.jsonl --plot runs/history.png
  nnk history runs/history.jsonl --plot history.pdf --title "ViT-S/16 on ImageNet-100"
  nnk history runs/history.jsonl --format json | jq '.best.nnk'
  nnk history runs/history.jsonl --tensorboard runs/tb    # then: tensorboard --logdir runs/tb
  nnk history runs/history.jsonl --wandb my-project       # back-fill: a W&B run per source
  nnk history runs/history.jsonl --mlflow file:./mlruns   # the same in MLflow
  nnk history runs/history.jsonl --params                 # the parameter sets recorded
  nnk history runs/history.jsonl --param-set 2            # or a key prefix: --param-set 3f9c
\b
One parameter set is shown at a time (default: the most recently used one); a
source evaluated again with the same parameters (--force) shows its newest line.
Rows are ordered by step (epoch, global step ... read from each checkpoint or its
file name), sources without a step after them by time. 'vs prev' is the change
from the row before, 'vs best' the distance to the best row, marked in 'best'.
Quality metrics recorded by nnk evaluate --quality get a column each (and a panel
each in --plot). --wandb and --mlflow write one run per source of the parameter
set shown, the same runs nnk evaluate --wandb/--mlflow writes (a re-run updates them).
Malformed lines are reported on stderr with their line number and skipped.
"""


@click.command(epilog=EPILOG)
@click.argument("history_path", metavar="HISTORY", type=click.Path(dir_okay=False, path_type=Path))
@plot_option(
    "plot_path",
    "Also draw top-1 over checkpoints for each method (.png, .svg or .pdf; needs the plot extra).",
    path_type=Path,
)
@title_option
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write best top-1/top-5/k per method (and quality/<metric> of --quality) against the step "
    "as TensorBoard scalars (needs the tensorboard extra).",
)
@tracker_options
@click.option("--params", "list_params", is_flag=True, help="List the history's parameter sets instead.")
@click.option(
    "--param-set",
    "param_set",
    default=None,
    metavar="N|KEY",
    help="Show parameter set N of --params (1 = most recent, the default) or the one whose key starts with KEY.",
)
@command_options
@click.pass_context
def history(ctx, history_path, plot_path, title, tensorboard_dir, trackers, list_params, param_set, fmt):
    """Show the evaluations recorded in HISTORY by nnk evaluate, one row per source."""
    from nnkcli.errors import InputError
    from nnkcli.tracking.history import read_history
    from nnkcli.tracking.paramsets import describe_parameters, parameter_sets
    from nnkcli.tracking.views import history_view, parameter_set_rows

    ui = get_ui(ctx)
    if title is not None and plot_path is None:
        raise click.UsageError("--title is the title of the --plot figure: give --plot too")
    if list_params and trackers:
        raise click.UsageError("--params lists the parameter sets; --wandb/--mlflow export one: drop --params")
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import check_logdir

        check_logdir(tensorboard_dir)
    hist = read_history(history_path, missing_ok=False)
    if hist.malformed:
        logger.warning(hist.malformed_summary())
    if list_params:
        rows = parameter_set_rows(parameter_sets(hist.entries))
        render(
            {"history": str(history_path), "parameter_sets": rows},
            fmt=ui.fmt,
            columns=[
                Column("number", "set"),
                Column("key", justify="left"),
                Column("entries"),
                Column("last_used", "last used", justify="left"),
                Column("settings", justify="left"),
            ],
            rows=rows,
            title=f"nnk history {history_path} --params",
        )
        return
    try:
        view = history_view(hist, param_set)
    except LookupError as exc:
        raise InputError(str(exc), hint=f"list them with: nnk history {history_path} --params") from None
    methods, rows, chosen = view.methods, view.rows, view.chosen
    if plot_path is not None:
        from nnkcli.plots import plot_history

        if not rows:
            raise InputError(
                f"{history_path} has no entries to plot; no figure was written",
                hint="nnk evaluate ... --history FILE records them",
            )

        from nnkcli.numerics.stats import DEFAULT_CONFIDENCE

        confidence = (chosen.parameters if chosen is not None else {}).get("confidence")
        if not isinstance(confidence, float) or not 0 < confidence < 1:
            confidence = DEFAULT_CONFIDENCE  # lines written before the level was recorded
        default_title = f"{history_path.name}: best top-1 of each method per checkpoint"
        plot_history(
            rows,
            plot_path,
            methods=methods,
            title=title or default_title,
            confidence=confidence,
            quality_metrics=view.quality_metrics,
        )
        logger.info(f"plot written to {plot_path}")
    payload = view.to_dict()
    if tensorboard_dir is not None:
        from nnkcli.tensorboard_log import write_history

        payload["tensorboard"] = write_history(view.ordered, methods, tensorboard_dir)
        logger.info(f"{payload['tensorboard']['scalars']} scalars written to {tensorboard_dir}")
    caption = f"{len(rows)} source" + ("" if len(rows) == 1 else "s")
    if chosen is not None:
        caption += f" with parameter set {chosen.number} ({chosen.key}: {describe_parameters(chosen.parameters)})"
        others = view.others
        if others:
            n_other = sum(s.n_entries for s in others)
            caption += (
                f"; {n_other} entr{'y' if n_other == 1 else 'ies'} with {len(others)} other parameter "
                f"set{'' if len(others) == 1 else 's'}: see --params, pick with --param-set"
            )
    if hist.malformed:
        caption += f", {len(hist.malformed)} malformed line{'' if len(hist.malformed) == 1 else 's'} skipped"
    render(
        payload,
        fmt=ui.fmt,
        columns=history_columns(methods, view.quality_metrics),
        rows=rows,
        title=f"nnk history {history_path}",
        caption=caption,
    )
    export_last({"entries": view.ordered}, trackers)  # after the table: a failed export loses nothing
