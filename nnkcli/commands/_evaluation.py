"""Options and rendering shared by ``classify`` and ``sweep`` (and ``evaluate``)."""

from __future__ import annotations

import click

from nnkcli.output import Column


def gate_percent(ctx, param, value):
    """A gate threshold: a finite percentage in [0, 100], else a usage error (exit 2)."""
    from nnkcli.numerics.metrics import check_gate_value

    try:
        return check_gate_value(param.opts[0], value)
    except ValueError:
        raise click.BadParameter(f"must be a finite percentage in [0, 100], got {value!r}") from None


def open_unit_interval(ctx, param, value):
    """A level or a significance threshold: strictly between 0 and 1, else exit 2."""
    if value is not None and not 0.0 < value < 1.0:  # also False for NaN
        raise click.BadParameter(f"must be strictly between 0 and 1, got {value!r}")
    return value


def check_gate_method(gate_method: str, method: str, gated: bool) -> None:
    """``--gate-method M`` with gates needs M among the methods run: a usage error (exit 2) before any work."""
    from nnkcli.errors import InputError
    from nnkcli.evaluation.classification import parse_methods

    if not gated or gate_method == "all":
        return
    try:
        methods = parse_methods(method)
    except InputError:
        return  # the core reports the unknown method
    if gate_method not in methods:
        raise click.UsageError(f"--gate-method {gate_method} is not among the methods run (--method {method})")


confidence_option = click.option(
    "--confidence", type=float, default=0.95, show_default=True, callback=open_unit_interval,
    help="Level of the interval shown with every accuracy (Wilson; bootstrap for balanced).")
alpha_option = click.option(
    "--alpha", type=float, default=0.05, show_default=True, callback=open_unit_interval,
    help="Significance level of the paired tests (McNemar).")
gate_method_option = click.option(
    "--gate-method", type=click.Choice(["all", "nnk", "knn"]), default="all", show_default=True,
    help="Which method's accuracy --min-top1/--min-top5 check.")


def evaluation_options(f):
    """Which splits/index to use and how to score: the options classify and sweep share."""
    opts = [
        click.option("--train-split", default="train", show_default=True, help="Split searched for neighbours."),
        click.option("--query-split", default="val", show_default=True, help="Split whose rows are classified."),
        click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
                     help="Saved index (default: STORE's <stem>.<train-split>.faiss if present, else built in memory)."),
        click.option("--rebuild-index", is_flag=True,
                     help="Rebuild (and save) a stale or damaged saved index instead of refusing it."),
        # plain strings, checked by the core: an unknown method or kernel is a data/user
        # error (exit 1, with a hint), like every other bad value of these commands
        click.option("--method", default="both", show_default=True, metavar="both|nnk|knn",
                     help="Which classifiers to run."),
        click.option("--kernel", default="cosine", show_default=True, metavar="cosine|gaussian",
                     help="NNK kernel: (1+cos)/2, or exp(-d^2/2s^2) with s = k-th neighbour distance / 3."),
        click.option("--temperature", type=float, default=0.07, show_default=True,
                     help="kNN weights exp(similarity / T), as DINO."),
        click.option("--weighting", default="exp", show_default=True, metavar="exp|similarity|uniform",
                     help="kNN vote weights: exp(s/T) as DINO, s, or 1."),
        click.option("--chunk-size", type=int, default=None,
                     help="Queries per chunk (default: sized to a 512 MiB working-memory budget)."),
        click.option("--threads", type=int, default=None, help="Threads for the search (default: all cores)."),
        click.option("--exclude-self", is_flag=True,
                     help="Leave-one-out: skip each query's own row (query split = train split)."),
        confidence_option,
        click.option("--min-top1", type=float, default=None, metavar="PCT", callback=gate_percent,
                     help="Exit with code 3 when a method's top-1 (%) is below PCT."),
        click.option("--min-top5", type=float, default=None, metavar="PCT", callback=gate_percent,
                     help="Exit with code 3 when a method's top-5 (%) is below PCT."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


EVAL_KWARGS = ("train_split", "query_split", "index_path", "rebuild_index", "kernel", "temperature",
               "weighting", "chunk_size", "threads", "exclude_self", "confidence")


def result_columns(include_support: bool = True) -> list[Column]:
    cols = [
        Column("method", justify="left"),
        Column("k"),
        Column("top1", "top-1 %", ".2f", ci="top1_ci"),
        Column("top5", "top-5 %", ".2f", ci="top5_ci"),
        Column("balanced_accuracy", "balanced %", ".2f", ci="balanced_accuracy_ci"),
        Column("n_queries", "queries"),
    ]
    if include_support:
        cols.append(Column("support_mean", "nnk support", ".1f"))
    return cols
