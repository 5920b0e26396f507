"""NNKEvalCallback: what a Lightning fit logs is evaluate_features on the module's features, in one
process and in a 2-process DDP fit (gloo, CPU)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnkcli.errors import MissingDependencyError

HELPERS = Path(__file__).resolve().parents[2] / "helpers"
REPO = HELPERS.parents[1]


def test_a_missing_lightning_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: importing it fails
    monkeypatch.delitem(sys.modules, "nnkcli.integrations.lightning", raising=False)
    with pytest.raises(MissingDependencyError, match="'lightning' extra") as caught:
        importlib.import_module("nnkcli.integrations.lightning")
    assert caught.value.hint == 'pip install "nnkcli[lightning]"'


@pytest.fixture(scope="module")
def fit():
    pytest.importorskip("lightning")
    import nnk_lightning_fit

    return nnk_lightning_fit


def _expected(fit, module, k) -> dict:
    """Per method and k the evaluate_features rows, and the best, on features computed here in one pass."""
    import torch

    from nnkcli import evaluate_features

    train, val = fit.datasets()
    module.eval()
    with torch.no_grad():
        doc = evaluate_features(module(train.tensors[0]), train.tensors[1], module(val.tensors[0]), val.tensors[1], k=k)
    out = {f"{r['method']}/top1@{r['k']}": r["top1"] for r in doc.to_dict()["results"]}
    out.update({f"{m}/top1": best["top1"] for m, best in doc.best.items()})
    out.update({f"{m}/k": best["k"] for m, best in doc.best.items()})
    return out


def _same(logged: dict, expected: dict) -> None:
    # self.log stores float32 tensors: compare at float32
    assert set(expected) <= set(logged), sorted(set(expected) - set(logged))
    assert {key: np.float32(logged[key]) for key in expected} == {key: np.float32(v) for key, v in expected.items()}


@pytest.mark.slow
def test_one_epoch_logs_evaluate_features_of_the_same_features(fit, tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from nnkcli.integrations.lightning import NNKEvalCallback

    train, val = fit.datasets()
    modes = []

    class Watch(NNKEvalCallback):
        def evaluate(self, pl_module):
            result = super().evaluate(pl_module)
            modes.append(pl_module.training)  # restored to train mode right after
            return result

    callback = Watch(DataLoader(train, batch_size=8), DataLoader(val, batch_size=5), k=fit.K)
    module = fit.TinyModule()
    trainer = fit.trainer(callbacks=[callback], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(module, DataLoader(train, batch_size=16))
    logged = {name: float(v) for name, v in trainer.callback_metrics.items()}
    expected = _expected(fit, module, fit.K)
    _same(logged, expected)
    assert 25 < logged["nnk/top1"] < 100 and modes == [True]
    assert callback.last_result is not None and callback.last_result.best["knn"]["top1"] == expected["knn/top1"]
    [metrics_csv] = tmp_path.glob("run/version_*/metrics.csv")  # the Trainer's logger received them
    [row] = [r for r in csv.DictReader(metrics_csv.open()) if r.get("nnk/top1")]
    assert np.float32(row["nnk/top1@3"]) == np.float32(expected["nnk/top1@3"]) and row["epoch"] == "0"


@pytest.mark.slow
def test_every_n_steps_once_per_optimizer_step(fit):
    from torch.utils.data import DataLoader

    from nnkcli.integrations.lightning import NNKEvalCallback

    train, val = fit.datasets()
    steps = []

    class Count(NNKEvalCallback):
        def evaluate(self, pl_module):
            steps.append(pl_module.trainer.global_step)
            return super().evaluate(pl_module)

    # 61 samples in batches of 8: 8 batches, 4 optimizer steps with gradients accumulated over 2
    callback = Count(DataLoader(train, batch_size=32), DataLoader(val, batch_size=32), k=3, every_n_steps=2)
    trainer = fit.trainer(callbacks=[callback], accumulate_grad_batches=2)
    trainer.fit(fit.TinyModule(), DataLoader(train, batch_size=8))
    assert steps == [2, 4]
    assert "nnk/top1@3" in trainer.callback_metrics


@pytest.mark.slow
def test_bad_options_are_refused_before_training(fit):
    from lightning.pytorch import LightningModule
    from torch.utils.data import DataLoader

    from nnkcli.errors import OptionError
    from nnkcli.integrations.lightning import NNKEvalCallback

    train, val = fit.datasets()
    loaders = DataLoader(train), DataLoader(val)
    for bad in (dict(every_n_steps=0), dict(every_n_epochs=-1), dict(k=0), dict(protocol="nope"), dict(kernel="x")):
        with pytest.raises(OptionError):
            NNKEvalCallback(*loaders, **bad)
    stepped = []

    class Module(fit.TinyModule):
        def training_step(self, batch, batch_idx):
            stepped.append(batch_idx)
            return super().training_step(batch, batch_idx)

    assert issubclass(Module, LightningModule)
    with pytest.raises(OptionError, match="fp16"):
        fit.trainer(callbacks=[NNKEvalCallback(*loaders, k=3, fp16=True)]).fit(
            Module(), DataLoader(train, batch_size=16)
        )
    assert stepped == []


@pytest.mark.slow
def test_two_ddp_ranks_log_what_one_process_computes(fit, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from nnkcli.integrations.training import evaluate_model, metrics

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "nnk_lightning_fit.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank logged (and returned) rank 0's numbers
    module = fit.TinyModule()
    module.load_state_dict(torch.load(tmp_path / "weights.pt"))
    train, val = fit.datasets()
    # one process, plain loaders, the trained weights: the same numbers as the 2 ranks
    one = metrics(evaluate_model(module, DataLoader(train, batch_size=61), DataLoader(val, batch_size=23), k=fit.K))
    expected = _expected(fit, module, fit.K)
    _same(ranks[0]["logged"], one)
    _same(ranks[0]["logged"], expected)
    assert ranks[0]["more"] == one  # rank 0 embedding a random-order loader, dict batches split in slices
    assert ranks[0]["training"] is True
