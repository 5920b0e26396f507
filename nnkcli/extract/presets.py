"""Extraction presets (``nnk extract --protocol``): the evaluation transform and the feature a peer takes.

Each preset was read from the source's own code, file and line at the commit named:

- ``dino``: facebookresearch/dino @ 7c446df, ``eval_knn.py``: ``Resize(256, interpolation=3)``
  (bicubic), ``CenterCrop(224)``, ``ToTensor()``, ``Normalize((0.485, 0.456, 0.406), (0.229,
  0.224, 0.225))`` (l. 33-36); the model is ``vits.__dict__[args.arch](patch_size=...,
  num_classes=0)`` (l. 60), whose forward returns ``self.norm(x)[:, 0]``, the class token after
  the final norm (``vision_transformer.py`` l. 213-214); a ResNet's pooled output
  (``model.fc = nn.Identity()``, ``eval_knn.py`` l. 65-66).
- ``dinov2``: facebookresearch/dinov2 @ b8931f7, ``dinov2/data/transforms.py``
  ``make_classification_eval_transform``: ``resize_size=256``, ``BICUBIC``, ``crop_size=224``,
  ImageNet mean/std (l. 77-91, the constants l. 42-43), used by ``dinov2/eval/knn.py`` (l. 334);
  the feature is ``x_norm_clstoken`` (``dinov2/models/vision_transformer.py`` l. 330), the class
  token after the final norm.
- ``clip``: openai/CLIP @ d05afc4, ``clip/clip.py`` ``_transform(n_px)``: ``Resize(n_px,
  BICUBIC)``, ``CenterCrop(n_px)``, ``ToTensor()``, ``Normalize((0.48145466, 0.4578275,
  0.40821073), (0.26862954, 0.26130258, 0.27577711))`` (l. 79-86), n_px 224 for the /16 and /32
  ViTs; the feature is the model's own output (timm's and transformers' CLIP vision towers:
  ``ln_post`` of the class token, ``clip/model.py`` l. 235, before the projection of l. 238).
- ``mae``: facebookresearch/mae @ efb2a80, ``main_linprobe.py``: ``Resize(256,
  interpolation=3)``, ``CenterCrop(224)``, ImageNet mean/std (l. 138-141); ``global_pool``
  defaults to False there (l. 72-73), so ``models_vit.py`` takes ``self.norm(x)[:, 0]`` (l. 50-51).

An option given explicitly overrides its preset value. The presets' ``cls`` falls back to
the model's own output for an architecture without tokens (a ResNet), as DINO's evaluation
does; ``--features cls`` given explicitly does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnkcli.errors import InputError

#: what ``--features`` takes: the model's own output, or (Vision Transformers) tokens after the final
#: norm -- the class token, the mean patch token, both concatenated, or the class tokens of the
#: last 4 blocks concatenated (DINO's linear evaluation, ``eval_linear.py`` l. 166-167)
FEATURES = ("output", "cls", "avgpool", "cls+avgpool", "last4")

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class ExtractionProtocol:
    """A peer's evaluation transform and feature choice."""

    name: str
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    features: str
    source: str

    def settings(self) -> dict:
        """The ``nnk extract`` settings this preset fills in."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "features": self.features,
        }


EXTRACTION_PROTOCOLS: dict[str, ExtractionProtocol] = {
    p.name: p
    for p in (
        ExtractionProtocol(
            "dino", 256, 224, "bicubic", *_IMAGENET, "cls", "facebookresearch/dino eval_knn.py l. 33-36"
        ),
        ExtractionProtocol(
            "dinov2", 256, 224, "bicubic", *_IMAGENET, "cls", "facebookresearch/dinov2 transforms.py l. 77"
        ),
        ExtractionProtocol("clip", 224, 224, "bicubic", *_CLIP, "output", "openai/CLIP clip/clip.py l. 79-86"),
        ExtractionProtocol(
            "mae", 256, 224, "bicubic", *_IMAGENET, "cls", "facebookresearch/mae main_linprobe.py l. 138"
        ),
    )
}


def apply_extraction_protocol(name: str | None, settings: dict, given: set[str] | frozenset[str]) -> dict:
    """``settings`` with the preset's values for every key not in ``given``.

    Parameters
    ----------
    name : str or None
        A key of ``EXTRACTION_PROTOCOLS``; None returns ``settings`` unchanged.
    settings : dict
        The extraction settings (``resize``, ``crop``, ``interpolation``, ``mean``, ``std``,
        ``features``), defaults included.
    given : set of str
        The settings given explicitly: they are kept.

    Returns
    -------
    dict
        A new dict; ``features_from_preset`` is True when the preset chose the features.
    """
    out = dict(settings)
    if name is None:
        return out
    if name not in EXTRACTION_PROTOCOLS:
        raise InputError(
            f"--protocol must be one of {', '.join(EXTRACTION_PROTOCOLS)}; got {name!r}", hint="e.g. --protocol dino"
        )
    for key, value in EXTRACTION_PROTOCOLS[name].settings().items():
        if key not in given:
            out[key] = value
    out["features_from_preset"] = "features" not in given
    return out
