"""Image folders, CSV lists and the evaluation transform (nnkcli.extract.images)."""

from __future__ import annotations

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.extract.images import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ImageDataset,
    read_image_list,
    scan_image_folder,
)


def _save(path, size=(10, 8), seed=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


# -- folders -----------------------------------------------------------------------------
def test_scan_image_folder_order_and_labels(tmp_path):
    root = tmp_path / "imgs"
    for rel in ["dog/b.png", "dog/a.JPG", "cat/z.png", "cat/sub/y.png", "cat/sub-2/w.png", "ant/x.bmp"]:
        _save(root / rel)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    _save(root / "cat" / ".cache" / "thumb.png")
    (root / "README").write_text("a file at the top level is not a class")
    samples = scan_image_folder(root)
    assert samples.class_names == ["ant", "cat", "dog"]
    # ImageFolder's order: files sorted within folders, folders sorted by path string
    assert samples.ids == ["ant/x.bmp", "cat/z.png", "cat/sub/y.png", "cat/sub-2/w.png", "dog/a.JPG", "dog/b.png"]
    assert samples.labels == [0, 1, 1, 1, 2, 2]
    assert [p.relative_to(root).as_posix() for p in samples.paths] == samples.ids
    assert samples.root == str(root.resolve())
    assert len(samples) == 6


def test_scan_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="--images: no such folder"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match="has no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    _save(tmp_path / "two" / "a" / "x.png")
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(InputError, match="class folder 'b' holds no images"):
        scan_image_folder(tmp_path / "two")


# -- CSV lists ------------------------------------------------------------------------------
def test_read_image_list_string_and_missing_labels(tmp_path):
    for name in ["a.png", "b.png", "c.png", "d.png"]:
        _save(tmp_path / "pics" / name)
    absolute = tmp_path / "pics" / "d.png"
    (tmp_path / "list.csv").write_text(f"path,label\npics/a.png,zebra\npics/b.png,ant\npics/c.png,\n{absolute},zebra\n")
    samples = read_image_list(tmp_path / "list.csv")
    assert samples.class_names == ["ant", "zebra"]
    assert samples.labels == [1, 0, -1, 1]
    assert samples.ids == ["pics/a.png", "pics/b.png", "pics/c.png", str(absolute)]
    assert samples.paths[0] == tmp_path / "pics" / "a.png"
    assert samples.paths[3] == absolute


def test_read_image_list_integer_labels_sorted_numerically(tmp_path):
    for name in ["a.png", "b.png", "c.png"]:
        _save(tmp_path / name)
    (tmp_path / "list.csv").write_text("a.png,10\nb.png,2\nc.png,10\n")  # no header
    samples = read_image_list(tmp_path / "list.csv")
    assert samples.class_names == ["2", "10"]
    assert samples.labels == [1, 0, 1]


def test_read_image_list_errors(tmp_path):
    with pytest.raises(InputError, match="--image-list: no such file"):
        read_image_list(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(InputError, match="lists no images"):
        read_image_list(tmp_path / "empty.csv")
    _save(tmp_path / "a.png")
    (tmp_path / "gone.csv").write_text("a.png,x\nmissing1.png,x\nmissing2.png,y\n")
    with pytest.raises(InputError, match=r"2 listed files do not exist, first .*missing1.png"):
        read_image_list(tmp_path / "gone.csv")
    (tmp_path / "nopath.csv").write_text("a.png,x\n ,y\n")
    with pytest.raises(InputError, match="row 2 has no path"):
        read_image_list(tmp_path / "nopath.csv")


# -- the transform ------------------------------------------------------------------------
def test_transform_resized_size_follows_torchvision_rule():
    t = EvalTransform(resize=256, crop=224)
    assert t.resized_size(500, 375) == (341, 256)  # int(256 * 500 / 375) = 341
    assert t.resized_size(375, 500) == (256, 341)
    assert t.resized_size(300, 300) == (256, 256)
    assert t.resized_size(100, 33) == (775, 256)


def test_transform_without_resize_is_crop_and_normalise():
    """Shorter side already at --resize: no resampling, so the oracle is exact slicing."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)  # h=12, w=17
    image = Image.fromarray(pixels)
    t = EvalTransform(resize=12, crop=8)
    out = t(image)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    top, left = round((12 - 8) / 2), round((17 - 8) / 2)  # 2, 4 (4.5 rounds to 4)
    window = pixels[top : top + 8, left : left + 8].astype(np.float64) / 255.0
    want = (window - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out, want.transpose(2, 0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("interpolation, resample", [("bicubic", "BICUBIC"), ("bilinear", "BILINEAR")])
def test_transform_interpolation_is_pil_resampling(interpolation, resample):
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
    t = EvalTransform(resize=20, crop=20, interpolation=interpolation, mean=(0, 0, 0), std=(1, 1, 1))
    resized = image.resize((30, 20), resample=getattr(Image.Resampling, resample))  # int(20*45/30) = 30
    want = np.asarray(resized, dtype=np.float64)[:, 5:25] / 255.0
    np.testing.assert_allclose(t(image), want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    other = "bilinear" if interpolation == "bicubic" else "bicubic"
    assert not np.allclose(t(image), EvalTransform(20, 20, other, (0, 0, 0), (1, 1, 1))(image))


def test_transform_constant_image_and_modes():
    grey = Image.new("L", (40, 30), color=51)  # 51/255 = 0.2
    out = EvalTransform(resize=16, crop=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))(grey)
    for c, m in enumerate((0.1, 0.2, 0.3)):
        np.testing.assert_allclose(out[c], (0.2 - m) / 0.5, atol=1e-6)
    rgba = Image.new("RGBA", (20, 20), color=(255, 0, 0, 0))
    out = EvalTransform(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1))(rgba)
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1:], 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop": 300}, "--crop 300 is larger than --resize 256"),
        ({"resize": 0}, "--resize must be a positive integer, got 0"),
        ({"crop": 0}, "--crop must be a positive integer, got 0"),
        ({"interpolation": "nearest"}, "--interpolation must be one of bicubic, bilinear, got 'nearest'"),
        ({"mean": (0.5, 0.5)}, "--mean needs 3 values (R,G,B), got 2"),
        ({"std": (0.2, 0.0, 0.2)}, "--std values must be positive, got 0.2,0.0,0.2"),
    ],
)
def test_transform_validation(kwargs, message):
    with pytest.raises(InputError) as info:
        EvalTransform(**kwargs)
    assert info.value.message == message


# -- the dataset ---------------------------------------------------------------------------
def test_dataset_items_and_bad_files(tmp_path):
    _save(tmp_path / "c" / "a.png", size=(12, 12), seed=3)
    (tmp_path / "c" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = _save(tmp_path / "c" / "c.jpg", size=(12, 12), seed=4)
    truncated = tmp_path / "c" / "d.jpg"
    truncated.write_bytes(good.read_bytes()[:-60])
    samples = scan_image_folder(tmp_path)
    t = EvalTransform(resize=8, crop=8)
    ds = ImageDataset(samples, t, start=1)
    assert len(ds) == 3
    image, label, position, error = ds[0]
    assert position == 1 and label == 0 and image.shape == (3, 8, 8)
    assert error.startswith("UnidentifiedImageError")
    np.testing.assert_array_equal(image, 0)
    image, label, position, error = ds[1]
    assert error == "" and position == 2
    np.testing.assert_allclose(image, t(Image.open(good)), rtol=0, atol=0)
    assert ds[2][3] != ""  # truncated JPEG fails on full decode, not later
