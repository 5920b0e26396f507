"""``nnk compare``: is B better than A on the same queries (paired bootstrap, McNemar)?"""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import data_options, scoring_options
from nnkcli.commands._render import render_comparison


def _side(ctx, param, value):
    if value is None:
        return None
    from nnkcli.evaluation.compare import SideSpec

    try:
        return SideSpec.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--a",
    "a_spec",
    default=None,
    callback=_side,
    metavar="METHOD[@K]",
    help="Side A's classifier, e.g. knn@20 (default: nnk, or a prediction file's only method).",
)
@click.option(
    "--b",
    "b_spec",
    default=None,
    callback=_side,
    metavar="METHOD[@K]",
    help="Side B's classifier, e.g. nnk@50 (default: the same as A's).",
)
@scoring_options(
    single_k="compare", methods=False, alpha=True, k_help="k of a side whose METHOD has no @K (stores only)."
)
@data_options
@click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Paired-bootstrap resamples for the interval of B - A.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap (results repeat for a seed)."
)
@click.option("--per-class", is_flag=True, help="Also show per-class top-1 of A and B, largest difference first.")
@click.option(
    "--fail-if-worse", is_flag=True, help="Exit with code 3 when B is significantly worse than A (McNemar p < --alpha)."
)
@command_options
def compare(a, b, a_spec, b_spec, scoring, data, n_boot, seed, per_class, fail_if_worse, fmt):
    """Is B better than A on the same queries? Paired bootstrap and McNemar's exact test.

    A and B are two prediction files from 'classify --out' (same query split), two
    stores (classified with the same options, each through its own index), or one
    store with --a and --b naming two classifiers. Queries where exactly one side is
    right decide: McNemar's exact test gives the p-value, a paired bootstrap over
    the queries the interval of B - A.

    \b
    Examples:
      nnk compare feats.h5 --a knn@20 --b nnk@50
      nnk compare released.h5 candidate.h5 --a nnk@50 --fail-if-worse
      nnk compare pred_old.h5 pred_new.h5 --per-class --format json
    """
    from nnkcli.errors import GateFailed
    from nnkcli.evaluation.compare import compare as run_compare

    ui = get_ui()
    doc = run_compare(
        a, b, scoring, data=data, a=a_spec, b=b_spec, n_boot=n_boot, seed=seed, progress_factory=ui.progress
    )
    render_comparison(doc, fmt, per_class=per_class)
    if fail_if_worse and doc["better"] == "a":
        raise GateFailed(
            f"B ({doc['b']['source']}) is significantly worse than A ({doc['a']['source']}): {doc['verdict']}",
            hint="the comparison above was still written",
        )
