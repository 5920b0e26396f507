"""``--wandb`` and ``--mlflow``: the runs are read back (an offline W&B run through its transaction log,
an MLflow file store through ``MlflowClient``) and hold the document's numbers, parameters and figure;
a re-run updates the same runs; a missing extra or a store that cannot be written is a clean error
after the results were printed."""

from __future__ import annotations

import json
import sys

import pytest

import nnk_data  # tests/helpers (pytest's pythonpath)
from nnkcli.cli import cli
from nnkcli.errors import OutputError
from nnkcli.integrations.trackers import Trackers


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, its files under tmp_path/wb; MLflow's file store allowed for the read-back client."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()
    return tmp_path


def mlflow_runs(uri: str, experiment: str = "nnk") -> list:
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


# -- fast: the command line, without the tracker libraries ----------------------------------------


@pytest.mark.parametrize(("option", "extra"), [("--wandb", "wandb"), ("--mlflow", "mlflow")])
def test_missing_extra_before_any_work(runner, monkeypatch, option, extra):
    monkeypatch.setitem(sys.modules, extra, None)  # find_spec then finds nothing
    res = runner.invoke(cli, ["sweep", "nope.h5", option, "p"])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        f"Error: {option} needs the optional '{extra}' extra, which is not installed",
        f'Hint: pip install "nnkcli[{extra}]"',
    ]


def test_step_alone_still_needs_a_consumer(runner):
    res = runner.invoke(cli, ["sweep", "nope.h5", "--step", "3"])
    assert res.exit_code == 2 and "--tensorboard and --step go together" in res.stderr


def test_history_params_and_a_tracker_is_a_usage_error(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(Trackers, "check", lambda self: None)
    res = runner.invoke(cli, ["history", str(tmp_path / "h.jsonl"), "--params", "--wandb", "p"])
    assert res.exit_code == 2 and "drop --params" in res.stderr


@pytest.fixture
def failing_export(monkeypatch):
    """Trackers whose export fails as an unwritable store does (the libraries are not needed)."""
    calls = []

    def export(self, doc, *, step=None):
        calls.append(doc)
        raise OutputError("cannot write MLflow runs to file:/x (experiment nnk): read-only file system")

    monkeypatch.setattr(Trackers, "check", lambda self: None)
    monkeypatch.setattr(Trackers, "export", export)
    return calls


def test_a_failed_export_keeps_the_results_and_exits_1(runner, store, failing_export):
    res = runner.invoke(cli, ["classify", str(store), "--k", "5", "--format", "json", "--mlflow", "file:/x"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)  # printed whole before the export
    assert [r["method"] for r in doc["results"]] == ["nnk", "knn"]
    assert failing_export and failing_export[0]["results"] == doc["results"]
    assert res.stderr.splitlines()[-1].startswith("Error: cannot write MLflow runs")
    assert "Traceback" not in res.stderr


def test_a_failed_gate_keeps_exit_3_and_logs_the_export_error(runner, store, failing_export):
    res = runner.invoke(cli, ["classify", str(store), "--k", "5", "--min-top1", "100", "--mlflow", "file:/x"])
    assert res.exit_code == 3
    assert failing_export  # the export is tried also when a gate fails
    assert "cannot write MLflow runs" in res.stderr and "(the results are printed and saved)" in res.stderr


def test_report_exports_one_run_per_store_with_the_probe(runner, tmp_path, failing_export):
    """nnk report --mlflow: one run per store, each the store's sweep (at the k selected on train) and its probe."""
    from nnkcli.tracking.export import tracked_runs

    stores = [nnk_data.make_store(tmp_path / f"step_{s}.h5", train_seed=s) for s in (10, 20)]
    args = ["report", *map(str, stores), "--k", "3,5", "--c-grid", "1e-1:1e2:4", "--format", "json"]
    res = runner.invoke(cli, [*args, "--mlflow", "file:/x"])
    assert res.exit_code == 1  # the export failed, after the table was printed
    doc = json.loads(res.stdout)
    runs = tracked_runs(failing_export[0])
    assert [run.step for run in runs] == [10, 20] and len({run.key for run in runs}) == 2
    for run, row in zip(runs, doc["rows"]):
        assert run.metrics["linear/top1"] == row["linear"]["top1"]
        assert [run.metrics["linear/top1_low"], run.metrics["linear/top1_high"]] == row["linear"]["top1_ci"]
        assert run.metrics["linear/c"] == row["linear"]["c"]
        for method in ("nnk", "knn"):
            assert run.metrics[f"{method}/top1"] == row[method]["selected"]["top1"]
            assert run.metrics[f"{method}/k"] == row[method]["selected"]["k"]
            assert run.metrics[f"{method}/top1@3"] == row[method]["by_k"]["3"]["top1"]


# -- slow: the real libraries ------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_to_wandb_offline_and_an_mlflow_file_store(runner, offline):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    pytest.importorskip("matplotlib")
    import wandb_offline

    store = nnk_data.make_store(offline / "epoch_12.h5")
    uri = f"file:{offline / 'mlruns'}"
    args = ["sweep", str(store), "--k", "3,5,10", "--select-on", "train", "--format", "json"]
    res = runner.invoke(cli, [*args, "--wandb", "proj", "--mlflow", uri, "--mlflow-experiment", "exp"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)

    # the oracle: the printed document's own numbers, read key by key
    expected = {}
    for row in doc["results"]:
        expected[f"{row['method']}/top1@{row['k']}"] = row["top1"]
        expected[f"{row['method']}/top1@{row['k']}_low"] = row["top1_ci"][0]
    for method, point in doc["selected"].items():
        expected[f"{method}/top1"], expected[f"{method}/k"] = point["top1"], point["k"]
    for method, point in doc["best"].items():
        expected[f"{method}/best_top1"] = point["top1"]

    [run] = wandb_offline.offline_runs(offline / "wb")
    assert run.project == "proj" and run.name == "step 12"
    [row] = run.history
    assert row["_step"] == 12
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=1e-4), name
        assert run.summary[name] == pytest.approx(value, abs=1e-4), name
    assert run.config["k_values"] == [3, 5, 10] and run.config["select_on"] == "train"
    assert run.config["store"] == str(store) and run.config["step"] == 12
    assert row["nnk/sweep/_type"] == "image-file" and row["nnk/sweep/format"] == "png"
    image = offline / "wb" / "wandb"
    assert list(image.glob(f"offline-run-*/files/{row['nnk/sweep/path']}")), "the figure's file"

    [ml] = mlflow_runs(uri, "exp")
    assert ml.info.run_name == "step 12"
    for name, value in expected.items():
        assert ml.data.metrics[name.replace("@", "_at_")] == pytest.approx(value, abs=1e-4), name
    assert ml.data.params["k_values"] == "3,5,10" and ml.data.params["select_on"] == "train"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [point] = client.get_metric_history(ml.info.run_id, "nnk/top1")
    assert point.step == 12
    [folder] = client.list_artifacts(ml.info.run_id)
    assert [a.path for a in client.list_artifacts(ml.info.run_id, folder.path)] == ["nnk/sweep.png"]


@pytest.mark.slow
def test_evaluate_rerun_updates_the_same_runs_and_history_backfills_them(runner, offline):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    import wandb_offline

    feats = offline / "feats"
    feats.mkdir()
    for epoch in (1, 2):
        nnk_data.make_store(feats / f"epoch_{epoch}.h5", train_seed=epoch, n_train=120, n_query=30)
    history = offline / "h.jsonl"
    uri = f"file:{offline / 'mlruns'}"
    evaluate = ["evaluate", "--watch-dir", str(feats), "--history", str(history), "--k", "3,5", "--quality"]
    evaluate += ["--quality-k", "5", "--wandb", "proj", "--mlflow", uri, "-q"]

    assert runner.invoke(cli, evaluate).exit_code == 0
    first = wandb_offline.offline_runs(offline / "wb")
    assert sorted(r.name for r in first) == ["step 1", "step 2"]
    assert all("quality/rankme" in r.summary for r in first)
    runs = mlflow_runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["step 1", "step 2"]

    res = runner.invoke(cli, [*evaluate, "--force"])
    assert res.exit_code == 0, res.stderr
    second = wandb_offline.offline_runs(offline / "wb")
    assert len(second) == 4 and {r.id for r in second} == {r.id for r in first}  # 2 sources, 2 runs
    assert sorted(r.info.run_id for r in mlflow_runs(uri)) == sorted(r.info.run_id for r in runs)

    res = runner.invoke(cli, ["history", str(history), "--mlflow", uri, "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert sorted(r.info.run_id for r in mlflow_runs(uri)) == sorted(r.info.run_id for r in runs)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    for ml in mlflow_runs(uri):
        newest = [e for e in lines if e["sha256"] == ml.data.tags["nnk.sha256"]][-1]
        assert ml.data.metrics["nnk/top1"] == pytest.approx(newest["best"]["nnk"]["top1"])
        assert ml.data.metrics["quality/rankme"] == pytest.approx(newest["quality"]["rankme"])
        assert int(ml.data.params["step"]) == newest["step"]


@pytest.mark.slow
def test_a_store_that_cannot_be_written_is_a_clean_error_after_the_results(runner, offline):
    pytest.importorskip("mlflow")
    store = nnk_data.make_store(offline / "s.h5")
    (offline / "afile").write_text("x")
    uri = f"file:{offline / 'afile' / 'mlruns'}"  # below a file: MLflow cannot create it
    res = runner.invoke(cli, ["classify", str(store), "--k", "5", "--format", "json", "--mlflow", uri])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["results"]
    assert res.stderr.splitlines()[-2].startswith(f"Error: cannot write MLflow runs to {uri}")
    assert "Traceback" not in res.stderr
