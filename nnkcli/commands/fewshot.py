"""``nnk fewshot``: NNK and weighted k-NN against a few labelled train rows per class."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.commands._options import check_with, scoring_options, settings_option, split_option
from nnkcli.evaluation.fewshot import DEFAULT_K_SPEC, DEFAULT_PER_CLASS, DEFAULT_TRIES, per_class_counts
from nnkcli.evaluation.options import DataOptions
from nnkcli.output import Column, render
from nnkcli.settings import count, seed


@click.command("fewshot")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option(
    "--per-class",
    "per_class",
    default=",".join(map(str, DEFAULT_PER_CLASS)),
    show_default=True,
    metavar="N[,N...]",
    callback=check_with(per_class_counts),
    help="Train rows drawn per class (a class with fewer gives all of its rows).",
)
@click.option(
    "--tries",
    type=int,
    default=DEFAULT_TRIES,
    show_default=True,
    metavar="T",
    callback=check_with(count),
    help="Draws per --per-class value, each seeded by (--seed, N, try).",
)
@click.option(
    "--seed",
    "seed_",
    type=int,
    default=0,
    show_default=True,
    metavar="S",
    callback=check_with(seed),
    help="Seed of the class-balanced draws.",
)
@click.option(
    "--subset-file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Score this one subset instead of the draws: a train row index or sample id a line (ids matched "
    "exactly, else by base name: SimCLR's 1%/10% files); blank lines and # comments skipped.",
)
@scoring_options(
    alpha=False,
    k_default=DEFAULT_K_SPEC,
    omit=("exclude_self",),
    k_help="k values (the SPEC grammar of sweep); each is capped at the subset's rows.",
)
@split_option("train_split")
@split_option("query_split")
@settings_option(DataOptions, "strict_provenance")
@command_options
def fewshot(store, per_class, tries, seed_, subset_file, scoring, train_split, query_split, strict_provenance, fmt):
    """Top-1/top-5 of NNK and weighted kNN when only a few train rows per class are labelled.

    For each N of --per-class and each of --tries draws, N labelled train rows of every
    class are drawn (seeded, the same whatever --threads), and the query split is scored
    against those rows alone: an exact search of the subset, then the scoring of classify.
    Each row of the output is the mean over the tries, the standard deviation across tries
    (ddof 1) and an interval of the mean that counts both the draws and the queries; k
    is capped at the subset's rows (k_used). --format json records each try's train rows
    ("subsets"), so any try can be recomputed.

    \b
    Examples:
      nnk fewshot feats.h5
      nnk fewshot feats.h5 --per-class 1,5,10 --tries 10 --k 20 --method nnk
      nnk fewshot feats.h5 --subset-file 1percent.txt --k 20,200
      nnk fewshot feats.h5 --format json | jq '.results[] | [.per_class, .method, .k, .top1]'
      nnk fewshot feats.h5 --backend torch --device cuda
    """
    from nnkcli.evaluation.fewshot import fewshot as run_fewshot

    ui = get_ui()
    data = DataOptions(train_split=train_split, query_split=query_split, strict_provenance=strict_provenance)
    result = run_fewshot(
        store,
        scoring,
        data=data,
        per_class=per_class,
        tries=tries,
        seed=seed_,
        subset_file=subset_file,
        progress_factory=ui.progress,
    )
    doc = result.to_dict()
    render(doc, fmt=fmt, columns=columns(doc), rows=doc["results"], title=title(doc), caption=caption(doc))


def columns(doc: dict) -> list[Column]:
    cols = [Column("per_class", "n/class") if doc["per_class"] is not None else None, Column("method", justify="left")]
    cols += [Column("k"), Column("k_used", "k used")]
    if "knn" in doc["parameters"]["methods"]:
        cols.append(Column("temperature", "T", "g"))
    for what, name in (("top1", "top-1 %"), ("top5", "top-5 %")):
        cols += [Column(what, name, ".2f", ci=f"{what}_ci"), Column(f"{what}_std", "std", ".2f")]
    cols += [Column("tries"), Column("train_rows", "train rows")]
    return [c for c in cols if c is not None]


def title(doc: dict) -> str:
    what = f"subset {doc['subset_file']}" if doc["subset_file"] else f"{doc['tries']} tries, seed {doc['seed']}"
    return f"{doc['store']}: few-shot, {what}"


def caption(doc: dict) -> str:
    ci = doc["interval"]
    parts = [f"{doc['n_queries'] - doc['n_unlabelled']} queries", f"±: {ci['confidence']:.0%} interval, {ci['method']}"]
    if doc["tries"] > 1:
        parts.append("std across tries (ddof 1)")
    for capped in doc["k_capped"]:
        what = f"{capped['per_class']}/class" if capped["per_class"] is not None else "the subset"
        parts.append(f"{what}: k {','.join(map(str, capped['k']))} capped at {capped['k_used']}")
    parts.append(f"{doc['timing']['total_s']:.2f} s")
    return "; ".join(parts)
