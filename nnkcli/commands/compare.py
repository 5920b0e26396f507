"""``nnk compare``: is B better than A on the same queries (paired bootstrap, McNemar)?"""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import data_options, scoring_options
from nnkcli.output import Column, render


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
@click.option("--a", "a_spec", default=None, callback=_side, metavar="METHOD[@K]",
              help="Side A's classifier, e.g. knn@20 (default: nnk, or a prediction file's only method).")
@click.option("--b", "b_spec", default=None, callback=_side, metavar="METHOD[@K]",
              help="Side B's classifier, e.g. nnk@50 (default: the same as A's).")
@scoring_options(single_k="compare", methods=False, alpha=True,
                 k_help="k of a side whose METHOD has no @K (stores only).")
@data_options
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Paired-bootstrap resamples for the interval of B - A.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap (results repeat for a seed).")
@click.option("--per-class", is_flag=True, help="Also show per-class top-1 of A and B, largest difference first.")
@click.option("--fail-if-worse", is_flag=True,
              help="Exit with code 3 when B is significantly worse than A (McNemar p < --alpha).")
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
    doc = run_compare(a, b, scoring, data=data, a=a_spec, b=b_spec, n_boot=n_boot, seed=seed,
                      progress_factory=ui.progress)
    if not per_class:
        doc_out = {key: v for key, v in doc.items() if key != "per_class"}
    else:
        doc_out = doc
    if fmt == "json":
        render(doc_out, fmt=fmt, columns=[], rows=[])
    elif per_class:
        render(doc_out, fmt=fmt, columns=per_class_columns(), rows=doc["per_class"], caption=doc["verdict"])
    else:
        render(doc_out, fmt=fmt, columns=side_columns(), rows=[doc["a"], doc["b"]], caption=caption(doc))
    if fail_if_worse and doc["better"] == "a":
        raise GateFailed(f"B ({doc['b']['source']}) is significantly worse than A ({doc['a']['source']}): "
                         f"{doc['verdict']}", hint="the comparison above was still written")


def side_columns() -> list[Column]:
    return [Column("label", "side", justify="left"), Column("source", justify="left"),
            Column("method", justify="left"), Column("k"),
            Column("top1", "top-1 %", ".2f", ci="top1_ci"), Column("top5", "top-5 %", ".2f", ci="top5_ci"),
            Column("n", "queries")]


def per_class_columns() -> list[Column]:
    return [Column("class", justify="left"), Column("n"), Column("a", "A top-1 %", ".2f", ci="a_ci"),
            Column("b", "B top-1 %", ".2f", ci="b_ci"), Column("delta", "B - A", "+.2f")]


def caption(doc: dict) -> str:
    d, m, t5 = doc["difference"], doc["mcnemar"], doc["top5"]
    level = f"{100 * doc['confidence']:g} %"
    return (f"top-1 B - A = {d['points']:+.2f} points, {level} CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] "
            f"(paired bootstrap, {d['bootstrap']} resamples, seed {d['seed']}); McNemar: A only {m['a_only']}, "
            f"B only {m['b_only']}, p = {m['p_value']:.4g}\n"
            f"top-5 B - A = {t5['difference']['points']:+.2f} points, {level} CI "
            f"[{t5['difference']['ci'][0]:+.2f}, {t5['difference']['ci'][1]:+.2f}]; McNemar p = "
            f"{t5['mcnemar']['p_value']:.4g}\n"
            f"{doc['verdict']}")
