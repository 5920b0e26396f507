"""A PyTorch Lightning callback that measures NNK and k-NN accuracy while a model trains.

``NNKEvalCallback(train_loader, val_loader, k=[10, 20])`` evaluates the module at the end of
every training epoch (or every n optimizer steps) with
:func:`nnkcli.integrations.training.evaluate_model`: the module's features of both loaders,
in eval mode and without gradients, gathered from every DDP rank without duplicates, scored by
the in-memory evaluator, and logged through ``pl_module.log`` as ``nnk/top1``, ``knn/top1``,
``nnk/k``, ``nnk/top1@20`` ... so they reach ``trainer.callback_metrics`` and the Trainer's loggers.

The callback subclasses ``lightning.pytorch.Callback`` (``pip install "nnkcli[lightning]"``);
where only the older ``pytorch_lightning`` package is installed it subclasses that one's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nnkcli.errors import MissingDependencyError, OptionError
from nnkcli.evaluation.results import SweepResult
from nnkcli.integrations.training import evaluate_model, metrics, model_device, scoring_settings

if TYPE_CHECKING:
    from lightning.pytorch import Callback
else:
    try:
        from lightning.pytorch import Callback
    except ImportError:  # the package's name before Lightning 2.0, still published
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise MissingDependencyError("nnkcli.integrations.lightning", "lightning") from None


def _every(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(name, value, "must be a positive integer or None")
    return value


class NNKEvalCallback(Callback):
    """Evaluate NNK and weighted k-NN on the module's features during ``trainer.fit``.

    Parameters
    ----------
    train_dataloader, val_dataloader : DataLoader or iterable of batches
        The labelled reference set and the queries: ``(inputs, labels, ...)`` tuples or dicts
        (``inputs``/``x``/``image`` ... and ``labels``/``y``/``target`` ...); anything else needs
        ``batch_fn``. Give them a ``DistributedSampler`` (padding is removed) or a sequential
        sampler (each rank takes a slice) to share the work across DDP ranks; any other loader is
        embedded by rank 0 alone. They are the callback's own: the Trainer never replaces their sampler.
    k : int, str or sequence of int, optional
        The k values; default: the protocol's, else ``10..200``. Keep it short: it runs every epoch.
    every_n_epochs : int or None, default=1
        Evaluate at the end of every n-th training epoch.
    every_n_steps : int or None, default=None
        Evaluate after every n-th optimizer step instead (``every_n_epochs`` is then ignored).
    methods : "nnk", "knn" or both, optional
    protocol : str, optional
        A preset (``dino``, ``dinov2``, ``instdisc``, ``vissl``, ``nnk-paper``, ``nnkcli``).
    feature_fn : callable, optional
        ``feature_fn(pl_module, inputs) -> Tensor (n, d)`` (a backbone, a layer); default: the forward.
    batch_fn : callable, optional
        ``batch_fn(batch) -> (inputs, labels)``.
    fp16 : bool, default=False
        float16 autocast for the forward and the search (a module on CUDA only).
    key_format : str, default="{method}/{metric}@{k}"
        The per-k metric names (see :func:`nnkcli.integrations.training.metrics`).
    prog_bar : bool, default=False
        Show ``nnk/top1`` and ``knn/top1`` in the progress bar.
    **settings
        Any other scoring setting of :func:`nnkcli.evaluate_features` (``temperature``, ``kernel`` ...).

    Notes
    -----
    Every rank logs the same values (rank 0's evaluation, broadcast), so ``ModelCheckpoint`` and
    ``EarlyStopping`` can monitor ``nnk/top1``. ``last_result`` holds the latest ``SweepResult``.
    """

    def __init__(
        self,
        train_dataloader,
        val_dataloader,
        *,
        k: int | str | Sequence[int] | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        methods: str | Sequence[str] | None = None,
        protocol: str | None = None,
        feature_fn: Callable | None = None,
        batch_fn: Callable | None = None,
        fp16: bool = False,
        key_format: str = "{method}/{metric}@{k}",
        prog_bar: bool = False,
        **settings,
    ):
        self.train_dataloader = train_dataloader
        self.val_dataloader = val_dataloader
        self.every_n_steps = _every(every_n_steps, "every_n_steps")
        self.every_n_epochs = None if self.every_n_steps else _every(every_n_epochs, "every_n_epochs")
        self.settings = scoring_settings(k, methods=methods, protocol=protocol, **settings)  # refused here, not later
        self.feature_fn, self.batch_fn, self.fp16 = feature_fn, batch_fn, bool(fp16)
        self.key_format, self.prog_bar = key_format, prog_bar
        self.last_result: SweepResult | None = None
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.fp16 and model_device(pl_module).type != "cuda":
            raise OptionError("fp16", True, "needs a module on a CUDA device", hint="drop fp16 on the CPU")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._evaluate(trainer, pl_module, on_step=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # gradient accumulation calls this several times per optimizer step: evaluate a step once
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._evaluate(trainer, pl_module, on_step=True)

    def evaluate(self, pl_module) -> SweepResult:
        """The evaluation the schedule runs, now (every DDP rank must call it)."""
        return evaluate_model(
            pl_module,
            self.train_dataloader,
            self.val_dataloader,
            feature_fn=self.feature_fn,
            batch_fn=self.batch_fn,
            fp16=self.fp16,
            **self.settings,
        )

    def _evaluate(self, trainer, pl_module, *, on_step: bool) -> None:
        self.last_result = result = self.evaluate(pl_module)
        for name, value in metrics(result, key_format=self.key_format).items():
            pl_module.log(
                name,
                value,
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=self.prog_bar and name.endswith("/top1"),
                sync_dist=False,  # every rank holds rank 0's numbers already
                batch_size=1,
            )
