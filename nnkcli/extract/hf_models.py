"""``--model hf:DIR``: a Hugging Face ``transformers`` model saved in a local folder (the one transformers owner).

The folder is what ``model.save_pretrained(DIR)`` writes (``config.json`` and the
weights). It is loaded with ``local_files_only=True`` while ``HF_HUB_OFFLINE`` is set:
nothing is ever downloaded, and no code from the folder runs (``trust_remote_code`` stays
off). Loading is strict like ``--checkpoint``: a weight the folder lacks is an error
naming it, except a pooler the folder was saved without, which is dropped (its output
would be random).

The module returns one tensor: the model's ``pooler_output`` where it has one, else the
class token of ``last_hidden_state`` (token models) or its spatial mean (feature maps).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from nnkcli.errors import InputError

logger = logging.getLogger("nnkcli")

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextlib.contextmanager
def _offline():
    """Set the hub's offline switches for the call, restoring the environment after."""
    saved = {k: os.environ.get(k) for k in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class HFBackbone(torch.nn.Module):
    """A ``transformers`` vision model as a module from images (n, 3, h, w) to features (n, d)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        out = self.model(pixel_values=images)
        pooled = getattr(out, "pooler_output", None)
        if isinstance(pooled, torch.Tensor):
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.ndim == 3 else hidden.flatten(2).mean(-1)


def build_hf(directory: str, text: str) -> HFBackbone:
    """Load the model saved in ``directory`` (``AutoModel``), offline, strictly.

    Raises
    ------
    InputError
        transformers missing; ``directory`` not a saved model; weights missing from it.
    """
    folder = Path(directory)
    if not (folder / "config.json").is_file():
        raise InputError(
            f"--model {text}: {directory} is not a folder holding a saved model (no config.json)",
            hint="hf:DIR takes a local folder written by save_pretrained (nnk never downloads); "
            "fetch a hub model first, e.g. hf download facebook/dinov2-small --local-dir DIR",
        )
    with _offline():
        try:
            from transformers import AutoModel
        except ImportError as exc:
            raise InputError(
                f"--model {text} needs the 'transformers' package, which is not installed ({exc})",
                hint='pip install "nnkcli[hf]"',
            ) from None
        try:
            model, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for unusable folders
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InputError(
                f"--model {text}: transformers cannot load {directory} ({type(exc).__name__}: {first})",
                hint="the folder must hold config.json and the weights that save_pretrained wrote",
            ) from None
    missing = list(info.get("missing_keys") or [])
    if missing and all(k.startswith("pooler.") for k in missing) and getattr(model, "pooler", None) is not None:
        logger.info("model: %s has no pooler weights; the pooler is dropped (features: the class token)", directory)
        model.pooler = None
        missing = []
    bad = missing + [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []]
    if bad:
        raise InputError(
            f"--model {text}: {directory} lacks {len(bad)} of the model's weights: {', '.join(bad[:5])}"
            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""),
            hint="save the whole model with save_pretrained",
        )
    return HFBackbone(model)
