"""Weights & Biases runs of result documents (the only module that imports wandb: the ``wandb`` extra).

One W&B run per evaluated source (``nnkcli.tracking.export.TrackedRun``), its id derived from
the project and the run's identity, opened with ``resume="allow"``: a re-run updates that run
instead of adding another. The run's parameters are its config, its metrics are logged at
the source's training step (the summary holds the same values), the sweep figure is the
image ``nnk/sweep``. Where the runs go is wandb's own business, read from its environment
variables as W&B users set them: ``WANDB_ENTITY``, ``WANDB_DIR`` (default: the current
folder), ``WANDB_MODE=offline`` (written under ``WANDB_DIR/wandb/``, uploaded later with
``wandb sync``), ``WANDB_API_KEY``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from nnkcli.errors import MissingDependencyError, OutputError
from nnkcli.tracking.export import TrackedRun

logger = logging.getLogger("nnkcli")

#: the image key of the sweep figure
FIGURE_KEY = "nnk/sweep"


def available() -> bool:
    """Whether wandb can be imported (without importing it: it takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def _wandb():
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError("--wandb", "wandb") from None
    return wandb


def check(project: str) -> None:
    """Fail before a long computation: wandb installed, ``WANDB_DIR`` usable (the name: ``trackers.check_project``)."""
    if not available():
        raise MissingDependencyError("--wandb", "wandb")
    folder = os.environ.get("WANDB_DIR")
    if folder and Path(folder).exists() and not Path(folder).is_dir():
        raise OutputError(f"cannot write W&B runs: WANDB_DIR {folder} is a file", hint="point WANDB_DIR to a folder")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def export_runs(
    runs: Sequence[TrackedRun],
    project: str,
    *,
    figure_for: Callable[[TrackedRun], str | None] | None = None,
) -> dict:
    """Write ``runs`` to the W&B project ``project``; a re-run of the same runs updates them.

    ``figure_for(run)`` returns an image file of the run (or None). Returns ``{"project",
    "mode", "runs": [{"id", "name", "step"}]}``. Raises ``OutputError`` when the project or
    its local folder cannot be written (the runs written before stay written).
    """
    check(project)
    wandb = _wandb()
    settings = wandb.Settings(
        console="off", silent=True, save_code=False, x_disable_stats=True, x_save_requirements=False
    )
    written = []
    for tracked in runs:
        run_id = tracked.run_id(project)
        try:
            run = wandb.init(
                project=project,
                # read at each call, not once per process as wandb's settings are: a loop may change them
                entity=os.environ.get("WANDB_ENTITY") or None,
                dir=os.environ.get("WANDB_DIR") or None,
                mode=os.environ.get("WANDB_MODE") or None,
                id=run_id,
                name=tracked.name,
                resume="allow",
                group=tracked.group,
                job_type=tracked.kind,
                tags=["nnk", tracked.kind],
                reinit="create_new",  # beside a run the caller may have open (a training loop)
                settings=settings,
            )
        except Exception as exc:  # wandb's own errors: no key, no network, a folder it cannot write
            raise OutputError(
                f"cannot write W&B run {tracked.name} to project {project}: {_first_line(exc)}",
                hint="check `wandb login` (or WANDB_API_KEY) and WANDB_DIR, or set WANDB_MODE=offline",
            ) from None
        try:
            # after init, not through it: a resumed run whose values changed is updated, not refused
            run.config.update({**tracked.params, "nnk_key": tracked.key}, allow_val_change=True)
            data: dict = dict(tracked.metrics)
            figure = figure_for(tracked) if figure_for is not None else None
            if figure is not None:
                data[FIGURE_KEY] = wandb.Image(figure, caption=tracked.name)
            # W&B drops a point logged at a step below the run's last; a resumed run keeps its
            # points and gets the new values in its summary, which is what its tables show
            if tracked.step is None:
                run.log(data)
            elif int(tracked.step) >= int(getattr(run, "step", 0) or 0):
                run.log(data, step=int(tracked.step))
            else:
                logger.info(f"W&B run {run_id} already past step {tracked.step}: its summary updated")
            run.summary.update(tracked.metrics)
            run.finish(exit_code=0)
        except Exception as exc:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
            raise OutputError(f"cannot write W&B run {tracked.name} to project {project}: {_first_line(exc)}") from None
        written.append({"id": run_id, "name": tracked.name, "step": tracked.step})
    mode = os.environ.get("WANDB_MODE") or "online"
    logger.info(f"W&B: {len(written)} run{'' if len(written) == 1 else 's'} in project {project} ({mode})")
    return {"project": project, "mode": mode, "runs": written}
