"""Loading training checkpoints into a model, strictly.

Every parameter and buffer of the model must be found in the checkpoint: a model
that silently keeps random weights yields near-chance accuracy that looks like a bad
representation rather than a bad load (a common cause of such reports against
other evaluation tools). What training scripts wrap around the weights is handled automatically: the
state dict nested under ``state_dict``/``teacher``/``classy_state_dict``..., key
prefixes such as ``module.``, ``backbone.``, ``module.encoder_q.`` or
``trunk._feature_blocks.``. Keys the model has no place for (projection heads,
queues) are ignored and summarised. Each step is logged.

torch is imported inside the functions only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from nnkcli.errors import InputError
from nnkcli.extract.checkpoint_keys import Converter, fit_state_dict, list_keys, summarize_keys
from nnkcli.storage.checks import sha256_file

logger = logging.getLogger("nnkcli")

#: Keys under which training scripts nest the model's state dict, in order of preference
#: (DINO/iBOT: teacher before student -- the teacher is what their evaluations use).
CHECKPOINT_KEYS = (
    "state_dict",
    "model",
    "teacher",
    "student",
    "model_state",
    "model_state_dict",
    "network",
    "net",
    "classy_state_dict",
    "base_model",
    "trunk",
)


@dataclass
class CheckpointReport:
    """What ``load_checkpoint`` did.

    Attributes
    ----------
    path : str
        The checkpoint file.
    sha256 : str
        Hex digest of the file's bytes.
    key : str or None
        The path of nested keys the state dict was taken from (``"teacher"``,
        ``"classy_state_dict.base_model.model.trunk"``), ``None`` for the top level.
    stripped : dict of str to int
        Each prefix removed and from how many keys.
    n_loaded : int
        Number of tensors loaded into the model.
    unexpected : list of str
        Checkpoint keys the model has no place for (heads, projectors ...), ignored.
    conversion : str or None
        The key conversion applied (timm's ``checkpoint_filter_fn``, child positions), if any.
    """

    path: str
    sha256: str
    key: str | None = None
    stripped: dict[str, int] = field(default_factory=dict)
    n_loaded: int = 0
    unexpected: list[str] = field(default_factory=list)
    conversion: str | None = None


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False):
    """``torch.load`` a checkpoint onto the CPU, with clear errors.

    Parameters
    ----------
    path : path-like
    trust : bool, default=False
        Allow arbitrary pickled Python objects. By default only tensors, containers
        and ``argparse.Namespace`` (which DINO/MoCo store their arguments in) load,
        because unpickling runs code from the file.
    """
    import argparse
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}", hint="check the --checkpoint path")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global" is the safe unpickler refusing a class; anything else
        # (an unknown opcode, a truncated stream) means the bytes are not a checkpoint
        named = blocked_global(str(exc))
        if not trust and named is not None:
            blocked = _unsafe_globals(path) or [named]
            raise InputError(
                f"checkpoint {path} holds pickled Python objects beyond tensors"
                + (f" ({', '.join(blocked[:3])})" if blocked else ""),
                hint="if you trust the file, rerun with --trust-checkpoint (unpickling can run code)",
            ) from None
        raise _corrupt(path, exc) from None
    except Exception as exc:  # EOFError, RuntimeError (bad zip), ValueError ...
        raise _corrupt(path, exc) from None


_BLOCKED = re.compile(r"unsupported global[:\s]*(?:global\s+)?([A-Za-z_][\w.]*)?", re.IGNORECASE)


def blocked_global(message: str) -> str | None:
    """The class torch's safe unpickler refused, from its message; None if it refused nothing.

    torch words it "Unsupported global: GLOBAL mod.Name" or "unsupported GLOBAL mod.Name"
    depending on the version and file format, so the match ignores case. An empty
    string means a refusal whose class could not be read from the message.
    """
    found = _BLOCKED.search(message)
    if found is None:
        return None
    return found.group(1) or ""


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # only for the message; the load already failed
        return []


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(
        f"cannot read checkpoint {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)})",
        hint="the file may be truncated or in another format; check its size and sha256",
    )


def find_state_dict(obj, key: str | None = None) -> tuple[dict, str | None]:
    """The state dict inside a loaded checkpoint.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned.
    key : str, optional
        The key (or ``a.b.c`` path of nested keys) holding the state dict. By
        default, descend through the first of ``CHECKPOINT_KEYS`` present until a
        mapping of tensors is reached.

    Returns
    -------
    state_dict : dict of str to Tensor
    path : str or None
        The nested keys used, dotted (``None``: the checkpoint is the state dict).
    """
    if not isinstance(obj, Mapping):
        if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole pickled nn.Module
            return dict(obj.state_dict()), None
        raise InputError(
            f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors",
            hint="save model.state_dict(), or pass the model itself with --model torchscript:FILE",
        )
    if key is not None:
        picked, used = _descend(obj, key)
        if not _is_state_dict(picked):
            raise InputError(
                f"checkpoint[{used!r}] is not a dict of tensors",
                hint=_keys_hint(picked),
            )
        return dict(picked), used
    node: Any = obj
    path: list[str] = []
    while not _is_state_dict(node):
        nxt = next((k for k in CHECKPOINT_KEYS if isinstance(node.get(k), Mapping)), None)
        if nxt is None:
            where = f"checkpoint[{'.'.join(path)!r}]" if path else "the checkpoint"
            raise InputError(f"cannot find the model's state dict in {where}", hint=_keys_hint(node))
        path.append(nxt)
        node = node[nxt]
    dotted = ".".join(path) or None
    if dotted:
        logger.info("checkpoint: using the state dict under %r", dotted)
    return dict(node), dotted


def _descend(obj: Mapping, key: str) -> tuple[object, str]:
    if key in obj:
        return obj[key], key
    node = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise InputError(f"--checkpoint-key {key!r} is not in the checkpoint", hint=_keys_hint(obj))
        node = node[part]
    return node, key


def _is_state_dict(node: object) -> TypeGuard[Mapping]:
    import torch

    if not isinstance(node, Mapping) or not node:
        return False
    values = list(node.values())
    return any(isinstance(v, torch.Tensor) for v in values) and not any(isinstance(v, Mapping) for v in values)


def _keys_hint(node) -> str:
    if isinstance(node, Mapping):
        keys = [str(k) for k in list(node)[:8]]
        more = f", ... ({len(node)} keys)" if len(node) > 8 else ""
        return f"pick one with --checkpoint-key; its keys are: {', '.join(keys)}{more}"
    return "pick the nested dict with --checkpoint-key"


def load_checkpoint(
    model,
    path: str | os.PathLike,
    *,
    key: str | None = None,
    strip_prefix: Sequence[str] | None = None,
    trust: bool = False,
    converter: tuple[str, Converter] | None = None,
) -> CheckpointReport:
    """Load a checkpoint's weights into ``model``, strictly.

    Parameters
    ----------
    model : torch.nn.Module
        Loaded in place.
    path : path-like
        A file written by ``torch.save``.
    key : str, optional
        Nested key of the state dict (see ``find_state_dict``); auto-detected by default.
    strip_prefix : sequence of str, optional
        Prefixes to remove from the keys, in order. By default one is detected
        (``detect_prefix``).
    trust : bool, default=False
        Allow arbitrary pickled objects (see ``read_checkpoint``).
    converter : (name, callable), optional
        The architecture's own key conversion, tried when the keys as saved do not fit
        (see ``nnkcli.extract.checkpoint_keys.fit_state_dict``).

    Raises
    ------
    InputError
        Unreadable/corrupt file; no state dict found; any model parameter or buffer
        missing from the checkpoint (named in the message, with the keys left over); a
        shape mismatch.
    """
    path = Path(path)
    obj = read_checkpoint(path, trust=trust)
    state, used_key = find_state_dict(obj, key)
    model_state = model.state_dict()
    fit = fit_state_dict(state, model, strip_prefix=strip_prefix, converter=converter)
    for prefix, n in fit.stripped.items():
        logger.info("checkpoint: stripped prefix %r from %d keys", prefix, n)
    if fit.conversion:
        logger.info("checkpoint: keys converted by %s", fit.conversion)
    left_over = f"; left over in the checkpoint: {summarize_keys(fit.unexpected)}" if fit.unexpected else ""
    if fit.missing:
        if any(k in fit.state for k in model_state):
            # the layout matched: the weights themselves are absent (another variant, a partial save)
            hint = "is the checkpoint for this exact architecture? check --model (and --checkpoint-key)"
        else:
            sample = next(iter(fit.state), "")
            hint = (
                f"the model expects keys like {fit.missing[0]!r}, the checkpoint has keys like {sample!r}; "
                "pick the nested dict with --checkpoint-key or set --strip-prefix"
            )
        raise InputError(
            f"checkpoint {path.name} lacks {len(fit.missing)} of the model's {len(model_state)} "
            f"parameters/buffers: {list_keys(fit.missing)}{left_over}",
            hint=hint,
        )
    if fit.mismatched:
        k = fit.mismatched[0]
        raise InputError(
            f"checkpoint {path.name}: {len(fit.mismatched)} tensors have the wrong shape, first {k!r}: "
            f"checkpoint {tuple(fit.state[k].shape)} vs model {tuple(model_state[k].shape)}",
            hint="the checkpoint is for another architecture or width; check --model",
        )
    if fit.unexpected:
        logger.info(
            "checkpoint: ignored %d %s the model does not have: %s",
            len(fit.unexpected),
            "key" if len(fit.unexpected) == 1 else "keys",
            summarize_keys(fit.unexpected),
        )
    to_load = {k: v for k, v in fit.state.items() if k in model_state}
    try:
        model.load_state_dict(to_load, strict=False)
    except RuntimeError as exc:
        raise InputError(
            f"checkpoint {path.name} does not load into the model ({_first_line(exc)})",
            hint="check that --model is the architecture the checkpoint was trained with",
        ) from None
    return CheckpointReport(
        path=str(path),
        sha256=sha256_file(path),
        key=used_key,
        stripped=fit.stripped,
        n_loaded=len(to_load),
        unexpected=fit.unexpected,
        conversion=fit.conversion,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the training step a checkpoint records (used by the history) ------------------------------
#: checkpoint dict keys holding a training counter, most specific first
CHECKPOINT_STEP_KEYS = ("epoch", "global_step", "step", "iteration", "iter")


def step_from_checkpoint(obj: Any) -> tuple[int, str] | None:
    """The training counter stored in a loaded checkpoint dict (``epoch``, ``global_step`` ...).

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned; anything but a mapping gives None.

    Returns
    -------
    (int, str) or None
        The counter and its key, the first of ``CHECKPOINT_STEP_KEYS`` holding a
        non-negative integer (a 0-d tensor counts).
    """
    if not isinstance(obj, dict):
        return None
    for key in CHECKPOINT_STEP_KEYS:
        value: Any = obj.get(key)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value >= 0:
            return value, key
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value), key
    return None


def read_checkpoint_step(path: str | os.PathLike) -> tuple[int, str] | None:
    """The counter inside a torch checkpoint, or None when torch cannot read it.

    Uses ``weights_only=True`` (a checkpoint is never executed just to read its
    epoch) and memory-maps the file where the format allows, so a multi-GB
    checkpoint is not read into memory. ``argparse.Namespace`` (DINO's and MoCo's
    saved arguments) is allowed; checkpoints pickling other objects are refused by
    ``weights_only``, and their step then comes from the file name.
    """
    try:
        import argparse

        import torch
    except ImportError:
        return None
    for kwargs in ({"mmap": True}, {}):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, **kwargs)
        except Exception as exc:  # any unreadable checkpoint: fall back to the name
            from nnkcli.errors import interrupt_in

            stop = interrupt_in(exc)
            if stop is not None:
                raise stop from exc
            continue
        return step_from_checkpoint(obj)
    return None
