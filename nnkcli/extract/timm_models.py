"""``--model timm:NAME``: timm architectures, built offline without weights (the one timm owner).

timm is where this field's Vision Transformer definitions live: DINO's, iBOT's, MoCo v3's
and MAE's ViTs share its parameter names, and its ``*_dinov2`` models take DINOv2's
released backbones through its own key conversion (``checkpoint_filter_fn`` in the
model's module), which this module hands to the checkpoint loader. The weights always
come from ``--checkpoint``: ``pretrained=True`` is refused, nothing is downloaded.

timm imports torchvision, which must be the build matching the installed torch (see
the install section of the docs).
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Callable

from nnkcli.errors import InputError

logger = logging.getLogger("nnkcli")


def _import_timm(text: str):
    try:
        import timm
    except ImportError as exc:
        raise InputError(
            f"--model {text} needs the 'timm' package, which is not installed ({exc})",
            hint='pip install "nnkcli[timm]" (torchvision must be the build matching your torch)',
        ) from None
    except Exception as exc:  # torchvision built for another torch fails at import with a RuntimeError
        raise InputError(
            f"--model {text}: timm cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            hint="install the torchvision build matching your torch (see the install section of the docs)",
        ) from None
    return timm


def build_timm(
    name: str, options: dict, text: str, *, input_size: int | None = None
) -> tuple[object, tuple[str, Callable] | None]:
    """``timm.create_model(name, pretrained=False, num_classes=0, **options)``, on the CPU.

    Parameters
    ----------
    name : str
        A timm architecture (``vit_small_patch16_224``, ``vit_small_patch14_dinov2``,
        ``resnet50``); a pretrained tag (``.lvd142m``) is accepted and ignored.
    options : dict
        Further keyword arguments of the architecture (``img_size=224``, ``depth=2``).
    text : str
        The ``--model`` value, for messages.
    input_size : int, optional
        The crop the model will see. An architecture taking ``img_size`` (a Vision
        Transformer: ``*_dinov2`` are made for 518) is built for this size, unless
        ``img_size`` is among ``options``; its position embeddings are then resampled from
        the checkpoint's by timm's ``checkpoint_filter_fn``.

    Returns
    -------
    module : torch.nn.Module
    converter : (str, callable) or None
        timm's ``checkpoint_filter_fn`` of the architecture's module, when it has one.
    """
    timm = _import_timm(text)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise InputError(
            f"--model {text}: timm has no architecture named {name!r}",
            hint=f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists them",
        )
    if options.get("pretrained"):
        raise InputError(
            f"--model {text}: pretrained=True would download weights", hint="pass the weights with --checkpoint"
        )
    kwargs = {"num_classes": 0, **options, "pretrained": False}
    model = None
    if input_size is not None and "img_size" not in options:
        # a ViT is built for the crop at once (building it twice doubles the start-up of a large model);
        # architectures without an image size refuse the keyword
        try:
            model = timm.create_model(name, **kwargs, img_size=input_size)
        except Exception:  # TypeError: no img_size; any other error is raised again, worded, below
            model = None
        native = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if model is not None and native and tuple(native[-2:]) != (input_size, input_size):
            made_for = "x".join(map(str, native[-2:]))
            logger.info("model: %s is made for %s images; built for %d", name, made_for, input_size)
    if model is None:
        model = _create(timm, name, kwargs, text)
    return model, _converter(model)


def _create(timm, name: str, kwargs: dict, text: str):
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # a wrong keyword (TypeError) or value (AssertionError, ValueError ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(
            f"--model {text}: timm cannot build it ({type(exc).__name__}: {first})",
            hint="check the key=value arguments against the architecture's constructor",
        ) from None


def _converter(model) -> tuple[str, Callable] | None:
    module_name = type(model).__module__
    if not module_name.startswith("timm.models."):
        return None
    convert = getattr(sys.modules.get(module_name), "checkpoint_filter_fn", None)
    if not callable(convert):
        return None
    short = module_name.rsplit(".", 1)[-1]
    return f"timm's {short}.checkpoint_filter_fn", lambda state, model: convert(state, model)
