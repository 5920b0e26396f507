"""Result documents to experiment trackers: ``Trackers(...).export(doc)``, the one call commands make.

``Trackers`` names where results go (a W&B project, an MLflow tracking URI and experiment);
``export`` turns a result document into runs (``nnkcli.tracking.export``), draws each
sweep's figure (``nnkcli.plots``, when matplotlib is installed) and hands them to
``wandb_export`` and ``mlflow_export``. Neither tracker library is imported before a
run is written (each takes seconds to import).

Inside a training loop::

    from nnkcli.integrations.trackers import Trackers
    Trackers(wandb="my-project").export(nnkcli.sweep("feats.h5", k_values="10..100").to_dict(), step=epoch)
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nnkcli.errors import OptionError, SettingName
from nnkcli.tracking.export import TrackedRun, tracked_runs

logger = logging.getLogger("nnkcli")

DEFAULT_EXPERIMENT = "nnk"  # mlflow_export.DEFAULT_EXPERIMENT, without importing it
#: characters W&B refuses in a project name
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"


def check_project(value: str, name: str | SettingName = "wandb") -> str:
    """A W&B project name: not empty, at most 128 characters, none of ``/ \\ # ? % :``."""
    if not value.strip() or len(value) > 128 or any(c in value for c in WANDB_PROJECT_FORBIDDEN):
        raise OptionError(
            name,
            value,
            "must be a W&B project name: 1 to 128 characters, none of / \\ # ? % :",
            hint="the entity (team or user) comes from WANDB_ENTITY",
        )
    return value


def check_not_empty(value: str, name: str | SettingName) -> str:
    """An MLflow tracking URI or experiment name: not blank."""
    if not value.strip():
        raise OptionError(name, value, "must not be empty")
    return value


@dataclass(frozen=True)
class Trackers:
    """Where result documents are exported.

    Parameters
    ----------
    wandb : str, optional
        W&B project (entity, folder and mode from ``WANDB_ENTITY``, ``WANDB_DIR``, ``WANDB_MODE``).
    mlflow : str, optional
        MLflow tracking URI (``file:./mlruns``, ``http://host:5000`` ...).
    mlflow_experiment : str, default="nnk"
        MLflow experiment (created when missing).
    figures : bool, default=True
        Attach each sweep's accuracy-versus-k figure (needs matplotlib, else left out).
    """

    wandb: str | None = None
    mlflow: str | None = None
    mlflow_experiment: str = DEFAULT_EXPERIMENT
    figures: bool = True

    def __bool__(self) -> bool:
        return self.wandb is not None or self.mlflow is not None

    def check(self) -> None:
        """Fail before a long computation: the extras installed, the names usable (no import of either)."""
        if self.wandb is not None:
            check_project(self.wandb)
            from nnkcli.integrations import wandb_export

            wandb_export.check(self.wandb)
        if self.mlflow is not None:
            check_not_empty(self.mlflow, "mlflow")
            check_not_empty(self.mlflow_experiment, "mlflow_experiment")
            from nnkcli.integrations import mlflow_export

            mlflow_export.check(self.mlflow, self.mlflow_experiment)

    def export(self, doc: dict, *, step: int | None = None) -> dict:
        """Export the runs of ``doc`` (see ``nnkcli.tracking.export.tracked_runs``) to every tracker.

        ``step``: the training step of a store document's features (default: read from its
        file name). Returns ``{"wandb": {...}, "mlflow": {...}}`` for the trackers named.
        Raises ``OutputError`` (exit 1) when a tracker cannot be written.
        """
        runs = tracked_runs(doc, step=step)
        exported: dict = {}
        if not self or not runs:
            return exported
        with tempfile.TemporaryDirectory(prefix="nnk-figures-") as tmp:
            figures = _Figures(Path(tmp), enabled=self.figures)
            if self.wandb is not None:
                from nnkcli.integrations import wandb_export

                exported["wandb"] = wandb_export.export_runs(runs, self.wandb, figure_for=figures)
            if self.mlflow is not None:
                from nnkcli.integrations import mlflow_export

                exported["mlflow"] = mlflow_export.export_runs(
                    runs, self.mlflow, experiment=self.mlflow_experiment, figure_for=figures
                )
        return exported


class _Figures:
    """Each run's PNG figure, drawn once for every tracker: its ``--plot`` file when a PNG, else drawn."""

    def __init__(self, folder: Path, *, enabled: bool = True):
        self.folder, self.enabled = folder, enabled
        self.drawn: dict[str, str | None] = {}
        self._warned = False

    def __call__(self, run: TrackedRun) -> str | None:
        if not self.enabled:
            return None
        if run.key not in self.drawn:
            self.drawn[run.key] = self._draw(run)
        return self.drawn[run.key]

    def _draw(self, run: TrackedRun) -> str | None:
        if run.figure is not None and run.figure.lower().endswith(".png") and Path(run.figure).is_file():
            return run.figure
        if run.sweep is None:
            return None
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            if not self._warned:
                logger.info('no sweep figure in the tracker runs: it needs the plot extra (pip install "nnkcli[plot]")')
                self._warned = True
            return None
        from nnkcli.plots import plot_sweep

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.name)
        path = self.folder / f"{run.key[:12]}-{name}.png"
        plot_sweep(run.sweep, path, title=f"{run.name}: top-1 vs k")
        return str(path)
