"""``nnk probe``: linear-probe accuracy, C chosen on held-out train rows, the query split read once."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import option_bundle, settings_option
from nnkcli.evaluation.options import DataOptions, ScoringOptions
from nnkcli.evaluation.probe_options import ProbeOptions
from nnkcli.output import Column, render

#: ProbeOptions' fields that have an option of their own (normalize is --no-normalize)
_PROBE = ("c_grid", "val_fraction", "seed", "patience", "fit_patience", "tol", "max_iter")

COLUMNS = [
    Column("method", justify="left"),
    Column("c", "C", ".4g"),
    Column("n_queries", "n"),
    Column("top1", "top-1 %", ".2f", ci="top1_ci"),
    Column("top5", "top-5 %", ".2f", ci="top5_ci"),
]


def probe_options(f):
    """The probe's settings (``ProbeOptions``); the command receives ``probe_opts``."""
    options = [settings_option(ProbeOptions, field) for field in _PROBE]
    options.append(
        click.option(
            "--no-normalize",
            is_flag=True,
            help="Fit the features as stored (default: each row scaled to unit length, as the kNN and NNK "
            "evaluations see them).",
        )
    )

    def build(kwargs):
        fields = {name: kwargs.pop(name) for name in _PROBE}
        kwargs["probe_opts"] = ProbeOptions(**fields, normalize=not kwargs.pop("no_normalize"))

    return option_bundle(options, build)(f)


@click.command("probe")
@click.argument("store", type=click.Path(dir_okay=False))
@probe_options
@settings_option(DataOptions, "train_split")
@settings_option(DataOptions, "query_split")
@settings_option(ScoringOptions, "threads")
@settings_option(ScoringOptions, "confidence")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write per-query class probabilities and top-5 (classify --out's format, method linear) "
    "to this HDF5 file, for 'nnk compare'.",
)
@command_options
def probe(store, probe_opts, train_split, query_split, threads, confidence, out, fmt):
    """Linear-probe accuracy: multinomial logistic regression on the frozen features.

    C (inverse L2 strength, scikit-learn's convention; the bias is not penalised) is chosen
    by the top-1 on a seeded, stratified 10 % of the train split (--val-fraction, --seed),
    along --c-grid with warm starts, stopping --patience values past the best (each of those
    fits stops once its held-out top-1 settles, --fit-patience); the model is then refit on
    every train row at that C and evaluated once on the query split, whose labels nothing
    before reads. Accuracies are in % (0-100).

    \b
    Examples:
      nnk probe feats.h5
      nnk probe feats.h5 --c-grid 1e-2:1e3:11 --format json | jq '.chosen_c'
      nnk probe feats.h5 --out probe.h5 && nnk compare probe.h5 nnk.h5
    """
    from nnkcli.evaluation.probe import probe as run_probe

    ui = get_ui()
    result = run_probe(
        store,
        probe_opts,
        train_split=train_split,
        query_split=query_split,
        threads=threads,
        confidence=confidence,
        predictions_path=out,
        progress_factory=ui.progress,
    )
    doc = result.to_dict()
    render(doc, fmt=fmt, columns=COLUMNS, rows=doc["results"], title=title(doc), caption=caption(doc))


def title(doc: dict) -> str:
    return f"linear probe: {doc['store']}"


def caption(doc: dict) -> str:
    sel = doc["selection"]
    curve = sel["curve"]
    best = curve[sel["best_index"]]
    grid = len(doc["parameters"]["c_grid"])
    parts = [
        f"C = {doc['chosen_c']:.4g}: held-out top-1 {best['held_out_top1']:.2f} % on {sel['n_held_out']} train rows",
        f"{len(curve)} of {grid} C values tried" + (" (stopped early)" if sel["stopped_early"] else ""),
        f"{doc['timing']['total_s']:.2f} s",
    ]
    return "; ".join(parts + list(doc["warnings"]))
