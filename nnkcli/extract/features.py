"""Which features a model gives: its own output, a Vision Transformer's tokens, or any module's output.

``--features`` (``nnkcli.extract.presets.FEATURES``) picks, for a Vision Transformer, tokens
after the final norm: the class token (DINO's and DINOv2's k-NN), the mean of the patch
tokens, both concatenated (DINOv2's ``create_linear_input`` order; DINO's ``eval_linear.py``
interleaves the two, a permutation of the same numbers that changes no distance), or the
class tokens of the last 4 blocks, each through the final norm, concatenated (DINO's
``get_intermediate_layers`` in its linear evaluation). ``--layer NAME`` takes the output of
any sub-module by a forward hook (a ResNet's ``avgpool``, a projector).

A Vision Transformer is recognised by its parts, wherever it comes from: a final norm and
a list of blocks (``norm``/``blocks``: timm, DINO, DINOv2, iBOT, MoCo v3, MAE;
``layernorm``/``encoder.layer`` or ``layers``: transformers' ViT and DINOv2). The tokens before the
patches (class, registers) are ``num_prefix_tokens`` (timm), ``1 + num_register_tokens``
(DINOv2) or 1.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from nnkcli.errors import InputError
from nnkcli.extract.presets import FEATURES

logger = logging.getLogger("nnkcli")

#: (final norm, blocks) of the Vision Transformers this recognises, as paths from the module or from
#: its ``model`` (``hf_models.HFBackbone``); transformers names the blocks ``encoder.layer`` or ``layers``
_TOKEN_PARTS = tuple(
    (owner + norm, owner + blocks)
    for owner in ("", "model.")
    for norm, blocks in (("norm", "blocks"), ("layernorm", "encoder.layer"), ("layernorm", "layers"))
)


def _submodule(module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def token_parts(module) -> tuple[Any, Any, int] | None:
    """(final norm, blocks, number of prefix tokens) of a Vision Transformer, or None."""
    for norm_path, blocks_path in _TOKEN_PARTS:
        norm, blocks = _submodule(module, norm_path), _submodule(module, blocks_path)
        if norm is not None and isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) and len(blocks):
            owner = _submodule(module, norm_path.rpartition(".")[0]) if "." in norm_path else module
            config = getattr(owner, "config", None)
            n_prefix = getattr(owner, "num_prefix_tokens", None)
            if n_prefix is None:
                registers = getattr(owner, "num_register_tokens", None) or getattr(config, "num_register_tokens", 0)
                n_prefix = 1 + int(registers or 0)
            return norm, blocks, int(n_prefix)
    return None


def _first(output):
    """A module's output tensor (transformers' blocks return tuples in some versions)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _pick_tokens(tokens, features: str, n_prefix: int):
    if tokens.ndim != 3:
        raise InputError(
            f"--features {features} needs tokens (n, tokens, dim); the output has shape {tuple(tokens.shape)}",
            hint="use --features output, or a --layer whose output is a token sequence",
        )
    cls = tokens[:, 0]
    if features == "cls":
        return cls
    mean = tokens[:, n_prefix:].mean(dim=1)
    return mean if features == "avgpool" else torch.cat([cls, mean], dim=-1)


class FeatureModel(torch.nn.Module):
    """``model`` returning the features ``features`` / ``layer`` name, shape (n, d).

    Parameters
    ----------
    model : torch.nn.Module
    features : str, default="output"
        One of ``FEATURES``.
    layer : str, optional
        Dotted name of the sub-module whose output is taken (``avgpool``, ``head.0``);
        (n, c, h, w) outputs are averaged over h and w, token outputs take ``features``.
    fallback : bool, default=False
        ``features`` came from a preset: a model without tokens gives its own output
        instead of an error.
    """

    def __init__(self, model, features: str = "output", layer: str | None = None, *, fallback: bool = False):
        super().__init__()
        if features not in FEATURES:
            raise InputError(f"--features must be one of {', '.join(FEATURES)}; got {features!r}", hint="e.g. cls")
        self.model = model
        self.layer = layer
        self._captured: dict[str, object] = {}
        self._n_prefix = 1
        self._norm: Any = None
        if isinstance(model, torch.jit.ScriptModule) and (layer or features != "output"):
            raise InputError(
                "--features/--layer need a Python module; a TorchScript model runs as it was exported",
                hint="use timm:NAME, hf:DIR or MODULE:CALLABLE, or export the features you want",
            )
        if layer is not None:
            if features == "last4":
                raise InputError("--features last4 takes the last 4 blocks; it cannot be combined with --layer")
            self._hook(_find_layer(model, layer), "layer")
            parts = token_parts(model)
            self._n_prefix = parts[2] if parts else 1
        elif features != "output":
            parts = token_parts(model)
            if parts is None:
                if not fallback:
                    raise InputError(
                        f"--features {features} needs a Vision Transformer (a final norm and blocks); "
                        f"{type(model).__name__} has neither norm/blocks nor layernorm/encoder.layer",
                        hint="use --features output, or --layer NAME for a sub-module's output",
                    )
                logger.info("features: %s has no tokens; taking its own output", type(model).__name__)
                features = "output"
            else:
                norm, blocks, self._n_prefix = parts
                if features == "last4":
                    if len(blocks) < 4:
                        raise InputError(f"--features last4 needs 4 blocks; the model has {len(blocks)}")
                    self._norm = norm
                    for i, block in enumerate(list(blocks)[-4:]):
                        self._hook(block, f"block{i}")
                else:
                    self._hook(norm, "norm")
        self.features = features

    def _hook(self, module, name: str) -> None:
        def keep(_module, _inputs, output):
            self._captured[name] = _first(output)

        module.register_forward_hook(keep)

    def forward(self, images):
        self._captured.clear()
        out = self.model(images)
        if self.layer is not None:
            taken = self._captured["layer"]
            if not isinstance(taken, torch.Tensor):
                raise InputError(f"--layer {self.layer} returned a {type(taken).__name__}, not a tensor")
            if taken.ndim == 4:
                return taken.mean(dim=(2, 3))
            if taken.ndim == 3:
                if self.features == "output":
                    raise InputError(
                        f"--layer {self.layer} gives tokens {tuple(taken.shape)}",
                        hint="pick them with --features cls, avgpool or cls+avgpool",
                    )
                return _pick_tokens(taken, self.features, self._n_prefix)
            return taken
        if self.features == "output":
            return out
        if self.features == "last4":
            return torch.cat([self._norm(self._captured[f"block{i}"])[:, 0] for i in range(4)], dim=-1)
        return _pick_tokens(self._captured["norm"], self.features, self._n_prefix)


def _find_layer(model, name: str):
    module = _submodule(model, name)
    if module is None:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3)
        raise InputError(
            f"--layer {name}: {type(model).__name__} has no sub-module of that name",
            hint=f"did you mean {', '.join(close)}?" if close else f"its top-level modules: {', '.join(names[:8])}",
        )
    return module
