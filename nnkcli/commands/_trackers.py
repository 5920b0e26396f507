"""``--wandb``/``--mlflow``/``--mlflow-experiment``: one option bundle, and the export after the results.

A command adds the bundle and exports its result document last::

    @tracker_options                       # the command receives trackers: Trackers
    def sweep(..., trackers, ...):
        ...
        render_sweep(doc, fmt)             # the results first: a failed export loses nothing
        with exported(doc, trackers):      # then the runs, whatever the gates in the block say
            check_gates(...)

The bundle checks, while the command line is parsed, that each tracker's extra is installed
(exit 1 with ``pip install "nnkcli[wandb]"``, before any computation). A tracker that cannot
be written is an error (exit 1) after the results were printed and saved; when the block
itself failed (a gate: exit 3), that exit code stands and the export's error is logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import click

from nnkcli.commands._options import check_with, option_bundle
from nnkcli.errors import NnkError
from nnkcli.integrations.trackers import DEFAULT_EXPERIMENT, Trackers, check_not_empty, check_project

logger = logging.getLogger("nnkcli")

_PARAMS = ("wandb", "mlflow", "mlflow_experiment")


def tracker_options(f):
    """``--wandb PROJECT``, ``--mlflow URI``, ``--mlflow-experiment NAME``; the command receives ``trackers``."""
    options = [
        click.option(
            "--wandb",
            default=None,
            metavar="PROJECT",
            callback=check_with(check_project),
            help="Also log each evaluated source as a run of this Weights & Biases project (its id derived "
            "from the source, so a re-run updates it; WANDB_ENTITY, WANDB_DIR, WANDB_MODE=offline as usual; "
            "needs the wandb extra).",
        ),
        click.option(
            "--mlflow",
            default=None,
            metavar="URI",
            callback=check_with(check_not_empty),
            help="Also log each evaluated source as a run of this MLflow tracking URI (file:./mlruns, "
            "http://HOST:5000; a re-run updates it; needs the mlflow extra).",
        ),
        click.option(
            "--mlflow-experiment",
            default=DEFAULT_EXPERIMENT,
            show_default=True,
            metavar="NAME",
            callback=check_with(check_not_empty),
            help="MLflow experiment of --mlflow (created when missing).",
        ),
    ]

    def build(kwargs):
        values = {name: kwargs.pop(name) for name in _PARAMS}
        trackers = Trackers(**values)
        trackers.check()  # the extras are there: fail now, not after the evaluation
        kwargs["trackers"] = trackers

    return option_bundle(options, build)(f)


@contextlib.contextmanager
def exported(doc: dict, trackers: Trackers | None, *, step: int | None = None) -> Iterator[None]:
    """Export ``doc`` when the block ends, also when it raised an ``NnkError`` (a gate, a failed source).

    A failed export raises its ``OutputError`` (exit 1) after a clean block; after a failed
    block it is logged and the block's error (and exit code) stands. An interrupt exports nothing.
    """
    failure: NnkError | None = None
    try:
        yield
    except NnkError as exc:
        failure = exc
    if trackers:
        try:
            trackers.export(doc, step=step)
        except NnkError as exc:
            if failure is None:
                raise
            logger.error(f"{exc.message} (the results are printed and saved)")
    if failure is not None:
        raise failure


def export_last(doc: dict, trackers: Trackers | None, *, step: int | None = None) -> None:
    """Export ``doc`` now, after the results were printed (``exported`` without a block)."""
    with exported(doc, trackers, step=step):
        pass
