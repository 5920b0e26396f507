"""MLflow runs of result documents (the only module that imports mlflow: the ``mlflow`` extra).

One MLflow run per evaluated source (``nnkcli.tracking.export.TrackedRun``) in the experiment
``--mlflow-experiment`` (default ``nnk``), written through ``MlflowClient`` (never the global
active run, so a training script's own run is left alone). A run carries the tag ``nnk.key``,
its identity: a re-run finds the run by that tag and updates it (new metric points at the
same step, the figure replaced, parameters not yet logged added: MLflow's parameters cannot
change) instead of adding another. Metric names are the W&B names with ``@`` written
``_at_`` (``nnk/top1@20`` -> ``nnk/top1_at_20``): MLflow allows letters, digits and
``_ - . / : ``space only. The figure is the artifact ``nnk/sweep.png``.

MLflow 3 keeps its file store (``file:`` URIs and plain paths) behind
``MLFLOW_ALLOW_FILE_STORE=true``; naming such a store with ``--mlflow`` is taken as that
choice, and the variable is set while the runs are written (restored afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from nnkcli.errors import MissingDependencyError, OutputError
from nnkcli.tracking.export import TrackedRun

logger = logging.getLogger("nnkcli")

#: the experiment of ``--mlflow`` without ``--mlflow-experiment``
DEFAULT_EXPERIMENT = "nnk"
#: the tag holding a run's identity
KEY_TAG = "nnk.key"
#: MLflow's limits (mlflow.utils.validation): a parameter's value, a batch's parameters or tags
MAX_PARAM_LENGTH = 6000
MAX_BATCH = 100
_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def available() -> bool:
    """Whether mlflow (or mlflow-skinny) can be imported, without importing it (seconds)."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def metric_name(name: str) -> str:
    """The MLflow spelling of a metric name (``@`` is not allowed there)."""
    return name.replace("@", "_at_")


def local_store(uri: str) -> Path | None:
    """The folder of a file store URI (``file:/x``, ``file:./x``, ``./x``), None for a server or a database."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path or ".")
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # a plain path (C:\ on Windows)
        return Path(uri)
    return None


def check(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
    """Fail before a long computation: mlflow installed, a file store's folder a folder."""
    if not available():
        raise MissingDependencyError("--mlflow", "mlflow")
    folder = local_store(uri)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write MLflow runs to {uri}: {folder} is a file", hint="give a folder")


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    if local_store(uri) is None or _FILE_STORE in os.environ:
        yield
        return
    os.environ[_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(_FILE_STORE, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _param_value(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text[:MAX_PARAM_LENGTH]


def _write_run(client, experiment_id: str, tracked: TrackedRun, figure: str | None) -> tuple[str, bool]:
    """Create or update the run of ``tracked``; returns (run id, whether it existed)."""
    from mlflow.entities import Metric, Param, RunTag

    found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{tracked.key}'", max_results=1)
    tags = {**tracked.tags, KEY_TAG: tracked.key, "mlflow.runName": tracked.name}
    if tracked.group:
        tags["nnk.group"] = tracked.group
    if found:
        run = found[0]
        run_id, logged = run.info.run_id, dict(run.data.params)
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(experiment_id, run_name=tracked.name, tags=tags)
        run_id, logged = run.info.run_id, {}
    now = int(time.time() * 1000)
    step = int(tracked.step) if tracked.step is not None else 0
    metrics = [Metric(metric_name(k), float(v), now, step) for k, v in tracked.metrics.items()]
    params = [Param(k, _param_value(v)) for k, v in tracked.params.items() if k not in logged]
    changed = [k for k, v in tracked.params.items() if k in logged and logged[k] != _param_value(v)]
    if changed:
        logger.info(f"MLflow run {run_id}: parameters cannot change, kept the logged {', '.join(changed)}")
    run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
    for start in range(0, max(len(metrics), len(params), len(run_tags)), MAX_BATCH):
        client.log_batch(
            run_id,
            metrics=metrics[start : start + MAX_BATCH],
            params=params[start : start + MAX_BATCH],
            tags=run_tags[start : start + MAX_BATCH],
        )
    if figure is not None:
        with tempfile.TemporaryDirectory(prefix="nnk-mlflow-") as tmp:
            named = Path(tmp) / f"sweep{Path(figure).suffix}"
            shutil.copyfile(figure, named)  # one artifact name per run: a re-run replaces it
            client.log_artifact(run_id, str(named), artifact_path="nnk")
    client.set_terminated(run_id)
    return run_id, bool(found)


def export_runs(
    runs: Sequence[TrackedRun],
    uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    figure_for: Callable[[TrackedRun], str | None] | None = None,
) -> dict:
    """Write ``runs`` to the MLflow tracking server or store ``uri``, experiment ``experiment``.

    ``figure_for(run)`` returns an image file of the run (or None). Returns ``{"uri",
    "experiment", "experiment_id", "runs": [{"id", "name", "step", "updated"}]}``. Raises
    ``OutputError`` when the store cannot be written (the runs written before stay written).
    """
    check(uri, experiment)
    written: list[dict] = []
    with _file_store_allowed(uri), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the file store's maintenance notice
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MissingDependencyError("--mlflow", "mlflow") from None
        tracked = None
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, experiment)
            for tracked in runs:
                figure = figure_for(tracked) if figure_for is not None else None
                run_id, updated = _write_run(client, experiment_id, tracked, figure)
                written.append({"id": run_id, "name": tracked.name, "step": tracked.step, "updated": updated})
        except Exception as exc:  # MlflowException, OSError, a server's HTTP error
            what = f"run {tracked.name}" if tracked is not None else "runs"
            raise OutputError(
                f"cannot write MLflow {what} to {uri} (experiment {experiment}): {_first_line(exc)}",
                hint="check the tracking URI and that its store or server can be written",
            ) from None
    logger.info(f"MLflow: {len(written)} run{'' if len(written) == 1 else 's'} in experiment {experiment} at {uri}")
    return {"uri": uri, "experiment": experiment, "experiment_id": experiment_id, "runs": written}
