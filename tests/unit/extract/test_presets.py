"""The --protocol presets (nnkcli.extract.presets): what they fill in, and their transform against
torchvision's composition in the peers' own code, on images of odd sizes and modes."""

from __future__ import annotations

import numpy as np
import pytest

from nnkcli.errors import InputError
from nnkcli.extract.presets import EXTRACTION_PROTOCOLS, FEATURES, apply_extraction_protocol

DEFAULTS = dict(resize=256, crop=224, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_a_preset_fills_what_was_not_given_and_keeps_what_was():
    out = apply_extraction_protocol("clip", {**DEFAULTS, "features": None}, given={"crop"})
    assert out["resize"] == 224 and out["interpolation"] == "bicubic" and out["crop"] == 224
    assert out["mean"] == (0.48145466, 0.4578275, 0.40821073) and out["features"] == "output"
    assert out["features_from_preset"] is True
    kept = apply_extraction_protocol("dino", {**DEFAULTS, "crop": 196, "features": "last4"}, {"crop", "features"})
    assert kept["crop"] == 196 and kept["features"] == "last4" and kept["features_from_preset"] is False
    assert kept["resize"] == 256 and kept["mean"] == (0.485, 0.456, 0.406)
    assert apply_extraction_protocol(None, DEFAULTS, set()) == DEFAULTS
    with pytest.raises(InputError, match="--protocol must be one of dino, dinov2, clip, mae; got 'simclr'"):
        apply_extraction_protocol("simclr", DEFAULTS, set())


def test_every_preset_is_complete():
    for preset in EXTRACTION_PROTOCOLS.values():
        assert preset.features in FEATURES and preset.crop <= preset.resize and " l. " in preset.source
    # DINOv2 and MAE evaluate with DINO's transform: the torchvision comparison below covers them
    dino = EXTRACTION_PROTOCOLS["dino"].settings()
    assert EXTRACTION_PROTOCOLS["dinov2"].settings() == EXTRACTION_PROTOCOLS["mae"].settings() == dino


def _images(folder):
    """Odd sizes and every mode a folder of photos holds; one JPEG rotated by its EXIF tag."""
    from PIL import Image

    rng = np.random.default_rng(0)
    made = []
    for name, mode, (h, w) in [
        ("rgba.png", "RGBA", (301, 257)),
        ("gray.png", "L", (233, 411)),
        ("palette.png", "P", (260, 260)),
        ("small.png", "RGB", (97, 131)),
        ("cmyk.jpg", "CMYK", (250, 299)),
    ]:
        channels = {"RGBA": 4, "L": 1, "P": 1, "RGB": 3, "CMYK": 4}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode=mode).save(folder / name)
        made.append(folder / name)
    rotated = Image.fromarray(rng.integers(0, 256, (243, 317, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees on display
    rotated.save(folder / "exif.jpg", exif=exif)
    made.append(folder / "exif.jpg")
    return made


@pytest.mark.parametrize("name", ["dino", "clip"])
def test_the_preset_transform_equals_torchvisions_composition(tmp_path, name):
    pytest.importorskip("PIL")
    transforms = pytest.importorskip("torchvision.transforms", exc_type=ImportError)
    from torchvision.datasets.folder import pil_loader  # what ImageFolder reads images with

    from nnkcli.extract.images import EvalTransform, load_image

    preset = EXTRACTION_PROTOCOLS[name]
    ours = EvalTransform(preset.resize, preset.crop, preset.interpolation, preset.mean, preset.std)
    # the peers' composition: eval_knn.py l. 33-36 writes interpolation=3, PIL's code for bicubic
    theirs = transforms.Compose(
        [
            transforms.Resize(preset.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(preset.crop),
            transforms.ToTensor(),
            transforms.Normalize(preset.mean, preset.std),
        ]
    )
    for path in _images(tmp_path):
        expected = theirs(pil_loader(path)).numpy()
        got = ours(load_image(path))
        assert got.shape == expected.shape == (3, preset.crop, preset.crop), path.name
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6, err_msg=path.name)
