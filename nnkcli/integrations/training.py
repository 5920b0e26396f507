"""NNK and k-NN accuracy of a model being trained, from two data loaders (plain PyTorch, any loop).

``evaluate_model(model, train_loader, val_loader, k=...)`` runs the model in eval mode and
without gradients over both loaders, gathers the features and labels of every process of a
``torch.distributed`` job on rank 0, scores them with the in-memory evaluator
(:func:`nnkcli.evaluate_features`) and hands every rank the same result. The Lightning callback
(``nnkcli.integrations.lightning``) is this function on a schedule.

Under ``torch.distributed`` each loader is split across the ranks so that every sample is
embedded exactly once, in the dataset's order:

- a loader whose sampler is a ``DistributedSampler``: the sampler pads its index list by
  repeating samples until every rank draws as many; each rank sends the indices its sampler
  yields with its rows, and rank 0 keeps each dataset index once, in index order (shuffled too);
- a map-style loader with a sequential sampler: each rank embeds one contiguous slice of the
  dataset (``nnkcli.extract.distributed.rank_slice``, the split a ``torchrun`` extraction uses)
  through a loader of the same batch size, workers and collate function;
- any other loader (a random sampler, an iterable dataset, a batch sampler): rank 0 embeds it whole.

A batch is ``(inputs, labels, ...)`` (a tuple or list) or a dict with an ``inputs``/``input``/
``x``/``image``/``images`` key and a ``labels``/``label``/``y``/``target``/``targets`` key; any
other layout needs ``batch_fn(batch) -> (inputs, labels)``. Labels are integer class ids
(``-1`` = unlabelled) or strings. Features are ``model(inputs)`` or ``feature_fn(model, inputs)``
(``inputs`` moved to the model's device): a tensor of shape ``(n, d)`` (or ``(n, d, 1, 1)``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.results import SweepResult

logger = logging.getLogger("nnkcli")

_INPUT_KEYS = ("inputs", "input", "x", "image", "images")
_LABEL_KEYS = ("labels", "label", "y", "target", "targets")


def scoring_settings(k=None, *, methods=None, protocol: str | None = None, **settings) -> dict:
    """The keyword settings of :func:`nnkcli.evaluate_features`, with a protocol preset applied.

    A preset (``nnkcli.evaluation.protocols``) fills the k values, temperature, top-5 rule and
    solver not given; with neither ``k`` nor a preset, ``nnk sweep``'s default k; a list of
    temperatures is a grid. Every value is checked (an ``OptionError`` naming it) and returned in
    its checked form, so that a callback refuses a bad one before training starts.
    """
    from nnkcli.evaluation.options import DEFAULT_K_SPEC, ScoringOptions, apply_protocol

    given = dict(settings)
    if k is not None:
        given["k"] = k
    if methods is not None:
        given["methods"] = methods
    if protocol is not None:
        given["protocol"] = protocol
    out = apply_protocol(given)
    out.setdefault("k_values", DEFAULT_K_SPEC)
    checked = ScoringOptions().replace(**out)  # validates every field
    return {key: getattr(checked, key) for key in out}


def default_batch_fn(batch) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a ``(inputs, labels, ...)`` tuple/list or of a dict (see the module doc)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        x = next((key for key in _INPUT_KEYS if key in batch), None)
        y = next((key for key in _LABEL_KEYS if key in batch), None)
        if x is not None and y is not None:
            return batch[x], batch[y]
        raise InputError(
            f"a batch dict with keys {sorted(map(str, batch))} has no inputs or no labels key",
            hint=f"use keys among {_INPUT_KEYS} and {_LABEL_KEYS}, or pass batch_fn=lambda b: (inputs, labels)",
        )
    raise InputError(
        f"cannot find inputs and labels in a batch of type {type(batch).__name__}",
        hint="batches are (inputs, labels) tuples or dicts; otherwise pass batch_fn=lambda b: (inputs, labels)",
    )


def _to_device(value, device):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {key: _to_device(v, device) for key, v in value.items()}
    return value


def model_device(model):
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def embed(model, loader, *, feature_fn=None, batch_fn=None, fp16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The features and labels of every batch of ``loader``, in order, on this process only.

    Returns ``(features, labels)``: float32 ``(n, d)`` and the labels as one array of length n.
    Call it inside ``torch.no_grad()`` with the model in eval mode (``evaluate_model`` does).
    """
    import torch

    device = model_device(model)
    unpack = batch_fn or default_batch_fn
    features, labels = [], []
    for batch in loader:
        inputs, y = unpack(batch)
        inputs = _to_device(inputs, device)
        with torch.autocast("cuda", dtype=torch.float16) if fp16 else contextlib.nullcontext():
            out = feature_fn(model, inputs) if feature_fn is not None else model(inputs)
        if not isinstance(out, torch.Tensor):
            raise InputError(
                f"the model returned a {type(out).__name__}, not a tensor of features",
                hint="pass feature_fn=lambda model, x: ... returning the (n, d) feature tensor",
            )
        if out.ndim == 4 and out.shape[2:] == (1, 1):
            out = out.flatten(1)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if out.ndim != 2 or out.shape[0] != len(y):
            raise InputError(
                f"the features have shape {tuple(out.shape)} for a batch of {len(y)} labels; expected (n, d)",
                hint="pass feature_fn=lambda model, x: ... returning one feature vector per sample",
            )
        features.append(out.detach().float().cpu().numpy())
        labels.append(y)
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels)


def _plan(loader, rank: int, world: int):
    """How this rank takes part in embedding ``loader``: ``(kind, loader or None, key)``.

    ``kind`` is "sampler" (``key``: the dataset indices the sampler yields, in order), "slice"
    (``key``: this rank; the loader is a new one over this rank's slice) or "rank0" (``key``: 0;
    the loader on rank 0, None elsewhere).
    """
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, SequentialSampler, Subset

    from nnkcli.extract.distributed import rank_slice

    sampler = getattr(loader, "sampler", None)
    dataset = getattr(loader, "dataset", None)
    if isinstance(sampler, DistributedSampler):
        # the order the loader will draw (its epoch and seed fix it), padding included
        return "sampler", loader, np.fromiter(iter(sampler), dtype=np.int64)
    if (
        world > 1
        and isinstance(loader, DataLoader)
        and isinstance(sampler, SequentialSampler)
        and not isinstance(dataset, IterableDataset)
        and loader.batch_size is not None
        and not loader.drop_last
    ):
        start, stop = rank_slice(len(dataset), rank, world)  # type: ignore[arg-type]
        part = DataLoader(
            Subset(dataset, range(start, stop)),  # type: ignore[arg-type]
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
        return "slice", part, rank
    if world > 1 and rank == 0:
        logger.info(
            "a loader without a DistributedSampler or a sequential sampler is embedded whole by rank 0; "
            "give it a DistributedSampler to share the work"
        )
    return "rank0", (loader if rank == 0 else None), 0


def _assemble(kind: str, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The ranks' ``(features, labels, key)`` parts as one set, each sample once, in dataset order."""
    parts = [p for p in parts if p is not None and len(p[1])]
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    features = np.concatenate([x for x, _, _ in parts])
    labels = np.concatenate([y for _, y, _ in parts])
    if kind == "sampler":
        # a DistributedSampler pads by repeating indices so that every rank draws as many: keep
        # each dataset index once (a loader dropping its last batch drew fewer than the sampler yields)
        indices = np.concatenate([key[: len(y)] for _, y, key in parts])
        _, first = np.unique(indices, return_index=True)  # sorted by dataset index
        return features[first], labels[first]
    order = np.argsort([key for _, _, key in parts], kind="stable")
    starts = np.cumsum([0] + [len(y) for _, y, _ in parts])
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in order])
    return features[rows], labels[rows]


def search_settings(scoring: dict, device, fp16: bool) -> dict:
    """``scoring`` with where the evaluator searches: on CUDA (the torch backend, fp16 if asked) for a
    model on CUDA, unless ``device`` or ``backend`` were given; ``fp16`` with a model elsewhere is refused."""
    if fp16 and device.type != "cuda":
        raise InputError(f"fp16 needs a model on a CUDA device (it is on {device})", hint="drop fp16 on the CPU")
    out = dict(scoring)
    if device.type == "cuda" and "device" not in out and "backend" not in out:
        out.update(backend="torch", device="cuda")
    if fp16:
        out["fp16"] = True
    return out


def _failure(exc: BaseException, rank: int) -> tuple[str, str]:
    return (type(exc).__name__, f"rank {rank}: {exc}")


def evaluate_model(
    model,
    train_loader,
    val_loader,
    *,
    k: int | str | Sequence[int] | None = None,
    methods: str | Sequence[str] | None = None,
    protocol: str | None = None,
    feature_fn: Callable | None = None,
    batch_fn: Callable | None = None,
    fp16: bool = False,
    class_names: Sequence[str] | None = None,
    **settings,
) -> SweepResult:
    """Sweep NNK and weighted k-NN over k on a model's features of two loaders (a training loop).

    The model runs in eval mode under ``torch.no_grad()``; every module's train/eval mode is
    restored afterwards. Under ``torch.distributed`` (when a process group is initialised) every
    rank must call it: the loaders are split across the ranks and gathered on rank 0 without
    duplicates (the module doc says how), rank 0 evaluates, and every rank returns its result.

    Parameters
    ----------
    model : torch.nn.Module
        On its device; the inputs are moved there. A CUDA model is also scored on CUDA (the torch
        search backend) unless ``device``/``backend`` are given.
    train_loader, val_loader : iterable of batches
        The labelled reference set and the queries (see the module doc for the batch layout).
    k : int, str or sequence of int, optional
        The k values (an int, a list or a ``--k`` SPEC like ``"10..200"``); default: the
        protocol's, else ``nnk sweep``'s ``10..200``.
    methods : "nnk", "knn" or both, optional
    protocol : str, optional
        A preset of ``nnkcli.evaluation.protocols`` (``dino``, ``dinov2``, ...).
    feature_fn : callable, optional
        ``feature_fn(model, inputs) -> Tensor (n, d)``: which layer; default ``model(inputs)``.
    batch_fn : callable, optional
        ``batch_fn(batch) -> (inputs, labels)``; default: tuples and dicts (the module doc).
    fp16 : bool, default=False
        The forward pass under float16 autocast and the torch search in float16 (CUDA only).
    **settings
        Any other scoring setting of :func:`nnkcli.evaluate_features` (``temperature``, ``kernel`` ...).

    Returns
    -------
    SweepResult
        As :func:`nnkcli.evaluate_features` returns; :func:`metrics` flattens it for a logger.
    """
    import torch
    import torch.distributed as dist

    scoring = scoring_settings(k, methods=methods, protocol=protocol, **settings)
    scoring = search_settings(scoring, model_device(model), fp16)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    modes = [(module, module.training) for module in model.modules()]
    mine: list = []
    kinds: list[str] = []
    error = None
    try:
        model.eval()
        with torch.no_grad():
            for loader in (train_loader, val_loader):
                kind, part, key = _plan(loader, rank, world)
                kinds.append(kind)
                if part is None:
                    mine.append(None)
                    continue
                x, y = embed(model, part, feature_fn=feature_fn, batch_fn=batch_fn, fp16=fp16)
                mine.append((x, y, key))
    except Exception as exc:
        if not distributed:
            raise
        error = exc
    finally:
        for module, training in modes:
            module.training = training
    if not distributed:
        train, val = (_assemble(kind, [part]) for kind, part in zip(kinds, mine, strict=True))
        return _score(train, val, scoring, class_names)

    gathered: list | None = [None] * world if rank == 0 else None
    dist.gather_object(_failure(error, rank) if error is not None else mine, gathered, dst=0)
    outcome: Any = None
    if rank == 0:
        assert gathered is not None
        failed = [g for g in gathered if isinstance(g, tuple)]
        if failed:
            outcome = failed[0]
        else:
            try:
                per_loader = [[g[i] for g in gathered] for i in range(2)]
                train, val = (_assemble(kind, parts) for kind, parts in zip(kinds, per_loader, strict=True))
                outcome = _score(train, val, scoring, class_names)
            except Exception as exc:
                error, outcome = exc, _failure(exc, rank)
    box = [outcome]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if isinstance(box[0], tuple):
        name, message = box[0]
        raise InputError(f"the evaluation failed on another rank ({name}): {message}")
    return box[0]


def _score(train, val, scoring: dict, class_names) -> SweepResult:
    from nnkcli.evaluation.in_memory import evaluate_features

    (x_train, y_train), (x_val, y_val) = train, val
    if not len(y_train) or not len(y_val):
        raise InputError(
            f"no samples to evaluate: {len(y_train)} train and {len(y_val)} validation",
            hint="check the two data loaders",
        )
    return evaluate_features(x_train, y_train, x_val, y_val, class_names=class_names, **scoring)


def metrics(result: SweepResult, *, key_format: str = "{method}/{metric}@{k}") -> dict[str, float]:
    """A result as flat scalars for a logger: per method its best k's ``top1``/``top5`` and the k, and per k.

    ``{method}/top1``, ``{method}/top5`` and ``{method}/k`` are the best k's (``result.best``); each row
    adds ``key_format`` with ``metric`` = top1 and top5 (``nnk/top1@20``; MLflow refuses ``@`` in a
    name: pass ``"{method}/{metric}_k{k}"``). A temperature grid adds ``,T=<t>`` to a k-NN row's key.
    """
    out: dict[str, float] = {}
    for method, best in result.best.items():
        out[f"{method}/top1"] = float(best["top1"])
        out[f"{method}/top5"] = float(best["top5"])
        out[f"{method}/k"] = float(best["k"])
    grid = len(result.document["parameters"].get("temperature_grid") or ()) > 1
    for row in result.results:
        for metric in ("top1", "top5"):
            key = key_format.format(method=row["method"], metric=metric, k=row["k"])
            if grid and row.get("temperature") is not None:
                key += f",T={row['temperature']:g}"
            out[key] = float(row[metric])
    return out
