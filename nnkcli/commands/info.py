"""``nnk info``: what a feature store holds."""

from __future__ import annotations

import click

from nnkcli.cli import command_options, get_ui
from nnkcli.output import Column, render

#: the class-count table lists at most this many classes (JSON always lists all)
MAX_CLASS_ROWS = 50

SPLIT_COLUMNS = [
    Column("split", justify="left"),
    Column("n"),
    Column("dim"),
    Column("dtype", justify="left"),
    Column("n_classes", "classes"),
    Column("unlabelled"),
    Column("created_at", "created", justify="left"),
    Column("source", justify="left"),
]


@click.command(
    epilog="""\b
Examples:
  nnk info sample_data/fashion-mnist.h5
  nnk info feats.h5 --format json | jq '.splits.train.n'
  nnk info feats.h5 --format csv
""",
)
@click.argument("store", type=click.Path(dir_okay=False, path_type=str))
@command_options
@click.pass_context
def info(ctx, store, fmt):
    """Show the splits of STORE: shapes, dtype, per-class counts and provenance.

    --format json prints everything (all class counts, every provenance attribute);
    csv prints one row per split.
    """
    from nnkcli.storage.store import FeatureStore

    ui = get_ui(ctx)
    with FeatureStore(store) as fs:
        payload = fs.describe()
    rows = [
        {"split": name, **split, "source": split["attrs"].get("source"), "created_at": split["attrs"].get("created_at")}
        for name, split in payload["splits"].items()
    ]
    caption = None if rows else "no splits yet: add one with nnk extract"
    render(
        payload, fmt=ui.fmt, columns=SPLIT_COLUMNS, rows=rows, title=f"{store} (d={payload['dim']})", caption=caption
    )
    if ui.fmt != "table" or not rows:
        return
    _render_class_counts(payload)
    _render_provenance(payload)


def _render_class_counts(payload: dict) -> None:
    classes = payload["classes"] or []
    if not classes:
        return
    names = list(payload["splits"])
    columns = [Column("class", justify="left")] + [Column(name) for name in names]
    rows = [
        {"class": cls, **{name: payload["splits"][name]["class_counts"].get(cls, 0) for name in names}}
        for cls in classes[:MAX_CLASS_ROWS]
    ]
    render(payload, fmt="table", columns=columns, rows=rows, title="Samples per class")
    hidden = len(classes) - len(rows)
    if hidden > 0:
        # printed apart: a rich caption would wrap to the narrow table's width
        click.echo(f"  ... {hidden} more classes; --format json lists all")


def _render_provenance(payload: dict) -> None:
    rows = [
        {"split": name, "key": key, "value": value}
        for name, split in payload["splits"].items()
        for key, value in split["attrs"].items()
        if key not in ("source", "created_at")
    ]
    if rows:
        columns = [Column("split", justify="left"), Column("key", justify="left"), Column("value", justify="left")]
        render(payload, fmt="table", columns=columns, rows=rows, title="Provenance")
