"""``nnk evaluate``: evaluate new checkpoints or stores into a history, then gate."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from nnkcli.cli import command_options, get_ui, lock_timeout_option
from nnkcli.commands._model_options import MODEL_PARAMS, model_options
from nnkcli.commands._options import (
    check_with,
    data_options,
    gate_options,
    given_on_command_line,
    points,
    scoring_options,
)
from nnkcli.commands._render import quality_columns
from nnkcli.commands._trackers import exported, tracker_options
from nnkcli.errors import GateFailed, NnkError
from nnkcli.output import Column, render
from nnkcli.tracking.quality_entries import quality_row
from nnkcli.tracking.runner import RunStatus

logger = logging.getLogger("nnkcli")


def _evaluate_model_options(f):
    """The shared model bundle plus what only ``evaluate`` needs: image folders and store keeping."""
    opts = [
        click.option(
            "--train-images",
            type=click.Path(exists=False),
            default=None,
            metavar="DIR|FILE.csv",
            help="Images extracted into the train split of each checkpoint: a folder with one "
            "sub-folder per class, or a CSV list of path,label rows.",
        ),
        click.option(
            "--val-images",
            type=click.Path(exists=False),
            default=None,
            metavar="DIR|FILE.csv",
            help="Images extracted into the query split of each checkpoint (folder or CSV list).",
        ),
        click.option(
            "--no-keep-store",
            "keep_store",
            flag_value=False,
            default=True,
            help="Delete a checkpoint's extracted store once evaluated (default: keep it in <history dir>/stores/).",
        ),
    ]
    f = model_options(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def _quality_options(f):
    """``--quality``, ``--quality-k``, ``--quality-queries`` and ``--gate-metric``."""
    from nnkcli.evaluation.quality import GATE_METRICS
    from nnkcli.tracking.quality_entries import DEFAULT_QUALITY_K

    opts = [
        click.option(
            "--quality",
            is_flag=True,
            help="Also record the query split's label-free quality metrics (RankMe, alpha-ReQ, NNK "
            "interpolation error; see nnk quality); a query split without labels then gets an entry too.",
        ),
        click.option(
            "--quality-k",
            type=click.IntRange(min=1),
            default=DEFAULT_QUALITY_K,
            show_default=True,
            help="Neighbors of the NNK interpolation error of --quality.",
        ),
        click.option(
            "--quality-queries",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Rows of the query split used for the interpolation error (a seeded sample) [default: all].",
        ),
        click.option(
            "--gate-metric",
            type=click.Choice(list(GATE_METRICS)),
            default=None,
            help="What --fail-on-regression gates instead of the top-1: a metric of --quality, in its own "
            "units (points for the LOO accuracies), worse in its direction (RankMe: lower; interpolation "
            "error: higher) [default: the best top-1 of --gate-method].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def outcome_columns(methods, quality_metrics=()) -> list[Column]:
    cols = [
        Column("source", justify="left"),
        Column("step"),
        Column("status", justify="left"),
        Column("sha256", "sha256", justify="left"),
    ]
    for m in methods:
        cols += [  # a table too wide for the terminal is split between methods
            Column(f"{m}_top1", f"{m} top-1 %", ".2f", ci=f"{m}_top1_ci", group=m),
            Column(f"{m}_k", f"{m} k", group=m),
        ]
    cols += quality_columns(quality_metrics)
    cols.append(Column("seconds", "seconds", ".1f"))
    return cols


def outcome_row(outcome, methods, quality_metrics=()) -> dict:
    entry = outcome.entry or {}
    status = outcome.status if not outcome.reason else f"{outcome.status}: {outcome.reason}"
    row = {
        "source": outcome.source.name,
        "step": entry.get("step"),
        "status": status,
        "sha256": (outcome.sha256 or "")[:12] or None,
        "seconds": (entry.get("timing") or {}).get("total_s") if outcome.status is RunStatus.EVALUATED else None,
    }
    for m in methods:
        best = (entry.get("best") or {}).get(m) or {}
        row[f"{m}_top1"], row[f"{m}_k"] = best.get("top1"), best.get("k")
        row[f"{m}_top1_ci"] = best.get("top1_ci")
    row.update(quality_row(entry, quality_metrics))
    return row


EPILOG = """\b
Examples:
  # every store in a folder; sources already in the history are skipped
  nnk evaluate --watch-dir runs/feats --pattern '*.h5' --history runs/history.jsonl
\b
  # checkpoints: extracted with the model into <history dir>/stores/, then swept
  nnk evaluate --watch-dir runs/dino --pattern 'checkpoint*.pth' \\
      --model torchvision:resnet50 --train-images data/train --val-images data/val \\
      --history runs/history.jsonl --k 10..200
\b
  # crontab: every night at 02:00; overlapping runs never record a source twice
  0 2 * * * cd /srv/ssl && nnk evaluate --watch-dir runs/dino --pattern '*.pth' --model torchvision:resnet50 --train-images data/train --val-images data/val --history runs/history.jsonl -q >> runs/evaluate.log 2>&1
\b
  # CI after a training job (works under `set -e`): 3 = accuracy regressed
  rc=0; nnk evaluate out/checkpoint.pth --model torchvision:resnet50 \\
      --train-images data/train --val-images data/val --history history.jsonl \\
      --fail-on-regression 1.0 --min-top1 60 || rc=$?
  case $rc in 0) ;; 3) echo "top-1 regressed" >&2; exit 1 ;; *) exit $rc ;; esac
\b
  # no labels: record RankMe and the NNK interpolation error; exit 3 when RankMe drops by over 5
  nnk evaluate --watch-dir runs/feats --history runs/history.jsonl --quality \\
      --fail-on-regression 5 --gate-metric rankme
\b
  # each source evaluated now also a W&B run and an MLflow run (a --force re-run updates them)
  nnk evaluate --watch-dir runs/feats --history runs/history.jsonl --wandb my-project --mlflow file:./mlruns
\b
Exit codes: 0 ok (also when nothing was new), 1 a source failed, bad input or
--wandb/--mlflow could not be written (the results are still recorded), 2 usage
error, 3 a gate failed (the results are still recorded), 130 interrupted.
"""


@click.command(epilog=EPILOG)
@click.argument("sources", nargs=-1, type=click.Path(dir_okay=True, path_type=Path), metavar="[SOURCE]...")
@click.option(
    "--history",
    "history_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON-lines history file (created when missing).",
)
@click.option(
    "--watch-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also take every file in DIR matching --pattern.",
)
@click.option("--pattern", default=None, help="Glob for --watch-dir [default: *.pth with --model, else *.h5].")
@scoring_options(device=False)  # --device (and --fp16) come with the model options and serve both
@data_options
@gate_options(history=True)
@click.option(
    "--fail-on-regression",
    "max_drop",
    type=float,
    default=None,
    metavar="PTS",
    callback=check_with(points),
    help="Exit 3 when a source of this run has a best top-1 more than PTS points below the best "
    "other source's (same parameters).",
)
@click.option(
    "--significant",
    is_flag=True,
    help="--fail-on-regression fails only when the drop is significant (McNemar on the same queries, --alpha).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Re-evaluate sources already recorded with these parameters (a new line; the newer wins).",
)
@_quality_options
@_evaluate_model_options
@lock_timeout_option
@tracker_options
@command_options
@click.pass_context
def evaluate(
    ctx,
    trackers,
    sources,
    history_path,
    watch_dir,
    pattern,
    scoring,
    data,
    max_drop,
    significant,
    force,
    quality,
    quality_k,
    quality_queries,
    gate_metric,
    gate_method,
    min_top1,
    min_top5,
    keep_store,
    model,
    train_images,
    val_images,
    fmt,
    lock_timeout,
    **model_kwargs,
):
    """Evaluate new checkpoints or feature stores into HISTORY, once each.

    Each SOURCE (a feature store, or a checkpoint with --model, --train-images and
    --val-images) is identified by the sha256 of its content and the evaluation
    parameters: one already in the history with these parameters is skipped (unless
    --force), any other is swept over --k for NNK and kNN and recorded as one JSON
    line (best top-1 and k per method, every k's top-1/top-5, parameters, step or
    epoch, times, host). Safe to run from overlapping cron jobs.

    The gates (--fail-on-regression, --min-top1, --min-top5) run after recording
    and check every source of this run, evaluated now or already recorded, each
    against the best of the other sources with the same parameters, for
    --gate-method; with --gate-metric, --fail-on-regression gates that quality metric
    of --quality instead of the top-1.
    """
    from nnkcli.evaluation.sweeps import sweep
    from nnkcli.numerics.metrics import check_gate_method
    from nnkcli.tracking.checkpoints import ModelOptions
    from nnkcli.tracking.history import read_history
    from nnkcli.tracking.quality_entries import QualityOptions, quality_metrics_of
    from nnkcli.tracking.runner import evaluate_sources, status_counts
    from nnkcli.tracking.source_gates import gate_run
    from nnkcli.tracking.sources import collect_sources

    ui = get_ui(ctx)
    methods = scoring.methods
    # one machine, one device: the extraction's --device is also where --backend torch searches
    device = str(model_kwargs.get("device") or "auto")
    scoring = scoring.replace(device="cuda" if device.startswith("cuda") else device)
    if not sources and watch_dir is None:
        raise click.UsageError("give at least one SOURCE or --watch-dir DIR")
    model_given = [
        n
        for n, v in (("--model", model), ("--train-images", train_images), ("--val-images", val_images))
        if v is not None
    ]
    model_opts = None
    if model_given:
        missing = {"--model", "--train-images", "--val-images"} - set(model_given)
        if missing:
            raise click.UsageError(
                f"checkpoint SOURCEs need --model, --train-images and --val-images "
                f"(missing: {', '.join(sorted(missing))})"
            )
        # only what was given is recorded (and names the extracted store), so the defaults can evolve
        extract = given_on_command_line(ctx, [n for n in MODEL_PARAMS if n != "model"])
        extract = {k: v for k, v in extract.items() if v not in ((), False)}
        if "strip_prefix" in extract:
            extract["strip_prefix"] = list(extract["strip_prefix"])
        model_opts = ModelOptions(model, train_images, val_images, extract=extract, keep_store=keep_store)
    if gate_method is None:
        gate_method = "nnk" if "nnk" in methods else methods[0]
    check_gate_method(gate_method, methods)
    if pattern is None:
        pattern = "*.pth" if model_opts else "*.h5"

    paths = collect_sources(sources, watch_dir=watch_dir, pattern=pattern)
    if not paths:
        logger.info(f"no file in {watch_dir} matches {pattern}")
    if significant and max_drop is None:
        raise click.UsageError("--significant qualifies --fail-on-regression PTS; give both")
    if gate_metric is not None:
        if max_drop is None:
            raise click.UsageError(f"--gate-metric {gate_metric} qualifies --fail-on-regression X; give both")
        if not quality:
            raise click.UsageError(f"--gate-metric {gate_metric} gates a metric of --quality; give --quality too")
        if significant:
            raise click.UsageError("--significant pairs per-query top-1 results; it cannot qualify --gate-metric")
    quality_opts = QualityOptions(k=quality_k, queries=quality_queries) if quality else None
    outcomes = evaluate_sources(
        paths,
        history_path,
        options=scoring,
        data=data,
        sweep=sweep,
        model=model_opts,
        progress_factory=ui.progress,
        force=force,
        lock_timeout=lock_timeout,
        quality=quality_opts,
    )

    history = read_history(history_path)
    if history.malformed:
        logger.warning(history.malformed_summary())
    gate = None
    if any(v is not None for v in (max_drop, min_top1, min_top5)):
        gate = gate_run(
            history_path,
            outcomes,
            method=gate_method,
            max_drop=max_drop,
            min_top1=min_top1,
            min_top5=min_top5,
            significant=significant,
            alpha=scoring.alpha,
            history=history,
            metric=gate_metric,
        )
        if not gate.sources:
            logger.warning(f"no source of this run has a {gate_method} result in {history_path.name}: nothing to gate")
        for note in gate.notes:
            logger.warning(note)

    quality_metrics = quality_metrics_of([o.entry for o in outcomes if o.entry is not None])
    counts = status_counts(outcomes)
    payload = {
        "history": str(history_path),
        "counts": counts,
        "sources": [o.to_dict() for o in outcomes],
        "gate": gate.to_dict() if gate is not None else None,
    }
    caption = ", ".join(f"{n} {s}" for s, n in counts.items()) + f" -> {history_path}"
    render(
        payload,
        fmt=ui.fmt,
        columns=outcome_columns(methods, quality_metrics),
        rows=[outcome_row(o, methods, quality_metrics) for o in outcomes],
        title="nnk evaluate",
        caption=caption,
    )

    failed = [o for o in outcomes if o.status is RunStatus.FAILED]
    evaluated = [o.entry for o in outcomes if o.status is RunStatus.EVALUATED and o.entry is not None]
    with exported({"entries": evaluated}, trackers):  # last, and only what was evaluated now
        if failed:
            first = failed[0]
            raise NnkError(
                f"{len(failed)} of {len(outcomes)} sources failed; {first.source.name}: {first.reason}",
                hint="failed sources are not recorded; the next run retries them",
            )
        if gate is not None and not gate.passed:
            raise GateFailed("; ".join(gate.failures), hint=f"see the whole history with: nnk history {history_path}")
