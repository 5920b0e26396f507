"""A tiny Lightning module on mixture data, and (run as a script) a DDP fit with the NNK callback.

``python nnk_lightning_fit.py OUT`` fits one epoch on 2 CPU processes (gloo) with
``NNKEvalCallback``; the train loader is sequential (each rank embeds a slice) and the validation
loader has a ``DistributedSampler`` (shuffled; 23 samples, so one is padding). After the fit every
rank also calls ``evaluate_model`` on loaders with a random sampler (rank 0 embeds them) and with
dict batches. Each rank writes ``OUT/rank-R.json``; rank 0 also the weights, ``OUT/weights.pt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nnk_data import mixture

N_TRAIN, N_VAL, DIM, K = 61, 23, 8, [3, 7]  # odd sizes: a DistributedSampler over 2 ranks pads one sample


def datasets() -> tuple[TensorDataset, TensorDataset]:
    (xt, yt), (xv, yv) = mixture(N_TRAIN, DIM, 1, noise=1.6), mixture(N_VAL, DIM, 2, noise=1.6)
    return (
        TensorDataset(torch.from_numpy(xt), torch.from_numpy(yt)),
        TensorDataset(torch.from_numpy(xv), torch.from_numpy(yv)),
    )


class DictDataset(Dataset):
    """The samples of a TensorDataset as ``{"image": x, "label": y}`` dicts."""

    def __init__(self, data: TensorDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"image": x, "label": y}


class TinyModule(pl.LightningModule):
    """A linear embedding (the features) under a linear classifier trained with cross-entropy."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(DIM, 6)
        self.head = torch.nn.Linear(6, 4)
        self.drop = torch.nn.Dropout(0.5)  # eval mode matters: features differ in train mode

    def forward(self, x):
        return self.drop(self.embed(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.head(self(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def trainer(**kwargs) -> pl.Trainer:
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(max_epochs=1, accelerator="cpu", **{**quiet, **kwargs})


def _ddp(out: Path) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler, RandomSampler

    from nnkcli.integrations.lightning import NNKEvalCallback
    from nnkcli.integrations.training import evaluate_model, metrics

    train, val = datasets()
    rank = dist_rank()
    val_sampler = DistributedSampler(val, num_replicas=2, rank=rank, shuffle=True, seed=3)
    callback = NNKEvalCallback(DataLoader(train, batch_size=8), DataLoader(val, batch_size=5, sampler=val_sampler), k=K)
    module = TinyModule()
    fit = trainer(strategy="ddp", devices=2, callbacks=[callback])
    fit.fit(module, DataLoader(train, batch_size=16))
    logged = {name: float(value) for name, value in fit.callback_metrics.items()}
    assert dist.is_initialized() and dist.get_world_size() == 2
    random_order = DataLoader(train, batch_size=8, sampler=RandomSampler(train))  # rank 0 embeds it whole
    as_dicts = DataLoader(DictDataset(val), batch_size=4)  # sequential: a slice per rank
    more = metrics(evaluate_model(module, random_order, as_dicts, k=K))
    (out / f"rank-{rank}.json").write_text(json.dumps({"logged": logged, "more": more, "training": module.training}))
    if rank == 0:
        torch.save(module.state_dict(), out / "weights.pt")


def dist_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))  # the launcher sets it in the second process


if __name__ == "__main__":
    _ddp(Path(sys.argv[1]))
