"""Models for feature extraction: ``--model`` specs and classification heads.

A model spec is one of

* ``torchvision:NAME`` -- a torchvision architecture (``torchvision:resnet50``) with
  its classification head replaced by the identity, so that the output is the
  pooled backbone feature;
* ``timm:NAME[,key=value...]`` -- a timm architecture built offline without weights and
  without its classifier (``timm.create_model(NAME, pretrained=False, num_classes=0,
  key=value...)``; ``nnkcli.extract.timm_models``);
* ``hf:DIR`` -- a Hugging Face ``transformers`` model saved in a local folder (never
  downloaded; ``nnkcli.extract.hf_models``);
* ``torchscript:FILE.pt`` -- any exported TorchScript model, used as it is;
* ``MODULE:CALLABLE`` -- a Python factory returning an ``nn.Module``, imported from
  the current directory or ``PYTHONPATH`` (how DINO's own ViTs or custom code plug in).

Trained weights are loaded by ``nnkcli.extract.torch_checkpoints.load_checkpoint``.

torch is imported inside the functions only, so the rest of nnkcli works without it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nnkcli.errors import InputError

logger = logging.getLogger("nnkcli")

#: Attribute names under which torchvision (and most other zoos) keep the classifier.
HEAD_ATTRIBUTES = ("fc", "head", "heads", "classifier")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value.

    ``kind`` is ``"torchvision"``, ``"timm"``, ``"hf"``, ``"torchscript"`` or ``"factory"``;
    ``target`` the architecture name, the folder, the file, or ``MODULE:CALLABLE``;
    ``options`` the ``key=value`` arguments of a timm architecture, values as Python literals.
    """

    kind: str
    target: str
    text: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def needs_checkpoint(self) -> bool:
        """torchvision and timm architectures are built with random weights, so they need one."""
        return self.kind in ("torchvision", "timm")


@dataclass
class LoadedModel:
    """A model ready for extraction and what was done to build it."""

    module: object  # torch.nn.Module
    spec: ModelSpec
    head_replaced: str | None = None
    #: the architecture's own checkpoint key conversion, (name, callable(state, model) -> state)
    converter: tuple[str, Callable] | None = None


# -- model specs -------------------------------------------------------------------
_SPEC_HINT = "use torchvision:NAME, timm:NAME, hf:DIR, torchscript:FILE.pt or MODULE:CALLABLE"


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``torchvision:NAME``, ``timm:NAME[,key=value...]``, ``hf:DIR``, ``torchscript:FILE`` or
    ``MODULE:CALLABLE``."""
    if not isinstance(text, str) or ":" not in text:
        raise InputError(f"--model {text!r} is not a model spec", hint=_SPEC_HINT)
    prefix, _, target = text.partition(":")
    if not prefix or not target:
        raise InputError(f"--model {text!r} is not a model spec", hint=_SPEC_HINT)
    if prefix == "torchvision":
        return ModelSpec("torchvision", target, text)
    if prefix == "timm":
        name, *pairs = _split_arguments(target)
        return ModelSpec("timm", name.strip(), text, tuple(_parse_option(text, pair) for pair in pairs))
    if prefix == "hf":
        return ModelSpec("hf", target, text)
    if prefix == "torchscript":
        return ModelSpec("torchscript", target, text)
    return ModelSpec("factory", text, text)


def _split_arguments(target: str) -> list[str]:
    """``NAME,a=1,b=(2,3)`` -> ["NAME", "a=1", "b=(2,3)"]: commas inside brackets belong to a value."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(target):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(target[start:i])
            start = i + 1
    return [*parts, target[start:]]


def _parse_option(text: str, pair: str) -> tuple[str, object]:
    """``depth=2`` -> ("depth", 2): the value a Python literal, else the string as written."""
    import ast

    key, sep, value = pair.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key.isidentifier() or not value:
        raise InputError(
            f"--model {text}: {pair!r} is not a key=value argument",
            hint="e.g. timm:vit_small_patch14_dinov2,img_size=224",
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def build_model(spec: ModelSpec | str, *, input_size: int | None = None) -> LoadedModel:
    """Build the model a spec names (on the CPU, weights as the spec provides them).

    Parameters
    ----------
    spec : ModelSpec or str
    input_size : int, optional
        The side of the images it will see (the crop). A timm Vision Transformer built
        for another size is built for this one (its position embeddings are then resampled
        from the checkpoint's by timm's own conversion).

    Raises
    ------
    InputError
        Unknown architecture, unreadable TorchScript file or Hugging Face folder, a
        factory that cannot be imported, fails, or returns something other than an
        ``nn.Module``.
    """
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if spec.kind == "torchvision":
        return _build_torchvision(spec)
    if spec.kind == "timm":
        from nnkcli.extract.timm_models import build_timm

        module, converter = build_timm(spec.target, dict(spec.options), spec.text, input_size=input_size)
        return LoadedModel(module, spec, converter=converter)
    if spec.kind == "hf":
        from nnkcli.extract.hf_models import build_hf

        return LoadedModel(build_hf(spec.target, spec.text), spec)
    if spec.kind == "torchscript":
        return LoadedModel(_load_torchscript(spec), spec)
    return LoadedModel(_call_factory(spec), spec)


def _build_torchvision(spec: ModelSpec) -> LoadedModel:
    try:
        import torchvision.models as tv_models
    except ImportError as exc:
        raise InputError(
            f"--model {spec.text} needs the 'torchvision' package, which is not installed ({exc})",
            hint="pip install torchvision (the build matching your torch), "
            "or use MODULE:CALLABLE / torchscript:FILE.pt",
        ) from None
    factory = getattr(tv_models, spec.target, None)
    if factory is None or not callable(factory) or spec.target.startswith("_"):
        import difflib

        names = [n for n in dir(tv_models) if not n.startswith("_") and n[:1].islower()]
        close = difflib.get_close_matches(spec.target, names, n=3)
        raise InputError(
            f"--model {spec.text}: torchvision has no model named {spec.target!r}",
            hint=f"did you mean {', '.join(close)}?" if close else "see torchvision.models for the names",
        )
    try:
        # weights=None: the trained weights come from --checkpoint, never from a download
        model = factory(weights=None)
    except TypeError:  # torchvision < 0.13 has no `weights` argument
        model = factory()
    head = replace_head(model)
    return LoadedModel(model, spec, head_replaced=head)


def replace_head(model) -> str:
    """Replace the classification head of ``model`` by ``nn.Identity``, in place.

    The head is the first of ``fc``, ``head``, ``heads``, ``classifier`` that the
    model has. A linear head is replaced whole; in a sequential head only the last
    linear layer is, so that pooling/normalisation layers before it stay (ConvNeXt's
    classifier starts with a LayerNorm, ViT's ``heads`` wraps its linear layer).

    Returns
    -------
    str
        The dotted name of the module that was replaced, e.g. ``"fc"``.
    """
    import torch.nn as nn

    for name in HEAD_ATTRIBUTES:
        head = getattr(model, name, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, name, nn.Identity())
            return name
        if isinstance(head, nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linear:
                head[linear[-1]] = nn.Identity()
                child = list(head._modules)[linear[-1]]
                return f"{name}.{child}"
        if isinstance(head, nn.Identity):
            return name
    raise InputError(
        f"cannot find the classification head of {type(model).__name__} (looked for {', '.join(HEAD_ATTRIBUTES)})",
        hint="wrap the architecture in a MODULE:CALLABLE factory that returns the backbone",
    )


def _load_torchscript(spec: ModelSpec):
    import torch

    path = Path(spec.target)
    if not path.is_file():
        raise InputError(f"--model {spec.text}: no such file {spec.target}", hint="check the path")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but remains the one self-contained export format
            # (torch 2.13 says so with a DeprecationWarning, 2.14 with a FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError / ValueError / zip errors
        raise InputError(
            f"--model {spec.text}: cannot load the TorchScript file ({_first_line(exc)})",
            hint="export it with torch.jit.script(model).save(path) or torch.jit.trace",
        ) from None


def _call_factory(spec: ModelSpec):
    import torch.nn as nn

    module_name, _, attr_path = spec.target.rpartition(":")
    if not module_name or not attr_path:
        raise InputError(f"--model {spec.text} is not a model spec", hint="use MODULE:CALLABLE")
    # `python -m` puts the working directory on sys.path but the `nnk` script does not
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(
            f"--model {spec.text}: cannot import module {module_name!r} ({exc})",
            hint="run from the directory holding it or add that directory to PYTHONPATH",
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InputError(
                f"--model {spec.text}: module {module_name!r} has no attribute {attr_path!r}",
                hint="MODULE:CALLABLE names a function or class in that module",
            ) from None
    if isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as exc:  # the user's code: say whose fault it is
            raise InputError(
                f"--model {spec.text}: the factory raised {type(exc).__name__}: {_first_line(exc)}",
                hint="call it in Python to see the traceback (or rerun with -v)",
            ) from exc
    else:
        raise InputError(f"--model {spec.text}: {attr_path!r} is not callable", hint="name a factory function")
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec.text}: the factory returned {type(model).__name__}, not a torch.nn.Module",
            hint="return the backbone module itself",
        )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
