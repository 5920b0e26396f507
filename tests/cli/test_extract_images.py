"""``nnk extract --images/--image-list --model``: model extraction end to end (CliRunner)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from nnkcli.cli import cli  # noqa: E402
from nnkcli.extract.images import EvalTransform, load_image, scan_image_folder  # noqa: E402
from nnkcli.storage.split_writer import partial_path  # noqa: E402
from nnkcli.storage.store import FeatureStore  # noqa: E402

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
CLASSES = ["cat", "dog", "owl"]
# small images keep the tests fast; the transform logic is the same at 256/224
FAST = ["--resize", "16", "--crop", "12", "--workers", "0", "--device", "cpu"]
TRANSFORM = EvalTransform(resize=16, crop=12)


@pytest.fixture
def image_dir(tmp_path):
    """3 classes x 4 noise images of assorted sizes and formats."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    sizes = [(20, 16), (16, 24), (31, 17), (18, 18)]
    for c, name in enumerate(CLASSES):
        for i, (w, h) in enumerate(sizes):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.{'jpg' if (c + i) % 2 else 'png'}")
    return root


def _extract(runner, store, *args, split="train", fmt="json"):
    return runner.invoke(cli, ["extract", str(store), "--split", split, *args, *FAST, "--format", fmt])


def _direct_features(model, root: Path) -> np.ndarray:
    """The oracle: every image through the same transform and the model, in one batch."""
    samples = scan_image_folder(root)
    batch = torch.from_numpy(np.stack([TRANSFORM(load_image(p)) for p in samples.paths]))
    with torch.no_grad():
        return model.eval()(batch).numpy()


def _trained_checkpoint(tinynets, path: Path, **wrap) -> dict:
    """A checkpoint of weights unlike the factory's: features prove they were loaded."""
    torch.manual_seed(7)
    donor = tinynets.TinyNet()
    with torch.no_grad():
        donor.bn1.running_mean.uniform_(-0.3, 0.3)
    donor.fc = torch.nn.Identity()
    state = donor.state_dict()
    torch.save(wrap.get("build", lambda s: s)(state), path)
    return state


# -- features equal a direct forward pass -------------------------------------------------
@pytest.mark.parametrize("kind", ["factory", "torchscript"])
def test_features_equal_direct_forward_pass(runner, tmp_path, image_dir, tinynets, kind):
    if kind == "factory":
        spec = "nnk_tinynets:tiny_backbone"
    else:
        path = tmp_path / "tiny.pt"
        with pytest.warns((DeprecationWarning, FutureWarning)):  # torch 2.13: Deprecation-, 2.14: FutureWarning
            torch.jit.script(tinynets.tiny_backbone().eval()).save(str(path))
        spec = f"torchscript:{path}"
    store = tmp_path / "feats.h5"
    result = _extract(
        runner, store, "--images", str(image_dir), "--model", spec, "--batch-size", "5", "--meta", "run=exp1"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 12 and summary["dim"] == tinynets.FEATURE_DIM
    assert summary["skipped_images"] == 0 and summary["resumed_rows"] == 0
    assert summary["device"] == "cpu" and summary["model"] == spec

    want = _direct_features(tinynets.tiny_backbone(), image_dir)
    with FeatureStore(store) as fs:
        split = fs.split("train")
        np.testing.assert_allclose(split.features[:], want, rtol=0, atol=1e-5)
        assert split.features.dtype == np.float32
        assert fs.classes == CLASSES
        assert split.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert split.ids == scan_image_folder(image_dir).ids
        attrs = split.attrs
    assert attrs["model"] == spec
    assert attrs["images"] == str(image_dir.resolve())
    assert (attrs["resize"], attrs["crop"], attrs["interpolation"]) == (16, 12, "bicubic")
    assert json.loads(attrs["mean"]) == [0.485, 0.456, 0.406]
    assert attrs["device"] == "cpu" and attrs["skipped_images"] == 0 and attrs["run"] == "exp1"
    assert "checkpoint_sha256" not in attrs
    assert attrs["source"] == f"model {spec} on images {image_dir.resolve()}"


def test_image_list_csv(runner, tmp_path, image_dir, tinynets):
    lines = ["path,label", "images/owl/img1.jpg,owl", "images/cat/img0.png,cat", "images/dog/img3.png,"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    store = tmp_path / "feats.h5"
    result = _extract(
        runner, store, "--image-list", str(tmp_path / "list.csv"), "--model", "nnk_tinynets:tiny_backbone"
    )
    assert result.exit_code == 0, result.stderr
    model = tinynets.tiny_backbone().eval()
    paths = [tmp_path / line.split(",")[0] for line in lines[1:]]
    with torch.no_grad():
        want = model(torch.from_numpy(np.stack([TRANSFORM(load_image(p)) for p in paths]))).numpy()
    with FeatureStore(store) as fs:
        np.testing.assert_allclose(fs.split("train").features[:], want, rtol=0, atol=1e-5)
        assert fs.classes == ["cat", "owl"]
        assert fs.split("train").labels.tolist() == [1, 0, -1]
        assert fs.split("train").ids == ["images/owl/img1.jpg", "images/cat/img0.png", "images/dog/img3.png"]


# -- checkpoints ---------------------------------------------------------------------------
def test_module_prefixed_checkpoint_under_state_dict_loads(runner, tmp_path, image_dir, tinynets):
    ckpt = tmp_path / "checkpoint.pth"

    def wrap(state):
        nested = {f"module.{k}": v for k, v in state.items()}
        nested["module.head.last_layer.weight"] = torch.zeros(4, 6)
        nested["module.head.mlp.0.weight"] = torch.zeros(4, 6)
        return {"epoch": 10, "state_dict": nested, "optimizer": {"lr": 0.1}}

    trained = _trained_checkpoint(tinynets, ckpt, build=wrap)
    store = tmp_path / "feats.h5"
    result = _extract(
        runner,
        store,
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:tiny_backbone",
        "--checkpoint",
        str(ckpt),
        fmt="table",
    )
    assert result.exit_code == 0, result.stderr
    assert "checkpoint: using the state dict under 'state_dict'" in result.stderr
    assert "checkpoint: stripped prefix 'module.' from 9 keys" in result.stderr
    assert "checkpoint: ignored 2 keys the model does not have: head.* (2)" in result.stderr
    assert "Wrote split 'train'" in result.stdout

    model = tinynets.tiny_backbone()
    model.load_state_dict(trained)
    want = _direct_features(model, image_dir)
    untrained = _direct_features(tinynets.tiny_backbone(), image_dir)
    with FeatureStore(store) as fs:
        got = fs.split("train").features[:]
        attrs = fs.split("train").attrs
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not np.allclose(got, untrained, atol=1e-3)  # the checkpoint's weights, not the factory's
    assert attrs["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert attrs["checkpoint"] == str(ckpt.resolve())
    assert attrs["checkpoint_key"] == "state_dict" and attrs["checkpoint_stripped_prefix"] == "module."


def test_checkpoint_missing_a_parameter_is_refused(runner, tmp_path, image_dir, tinynets):
    ckpt = tmp_path / "partial.pth"
    _trained_checkpoint(tinynets, ckpt, build=lambda s: {k: v for k, v in s.items() if k != "bn1.running_var"})
    store = tmp_path / "feats.h5"
    result = _extract(
        runner, store, "--images", str(image_dir), "--model", "nnk_tinynets:tiny_backbone", "--checkpoint", str(ckpt)
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == "Error: checkpoint partial.pth lacks 1 of the model's 7 parameters/buffers: bn1.running_var"
    assert lines[-1] == "Hint: is the checkpoint for this exact architecture? check --model (and --checkpoint-key)"
    assert not store.exists()


def test_corrupt_checkpoint(runner, tmp_path, image_dir, tinynets):
    ckpt = tmp_path / "broken.pth"
    _trained_checkpoint(tinynets, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    result = _extract(
        runner,
        tmp_path / "feats.h5",
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:tiny_backbone",
        "--checkpoint",
        str(ckpt),
    )
    assert result.exit_code == 1
    assert f"Error: cannot read checkpoint {ckpt}: not a readable PyTorch checkpoint (" in result.stderr
    assert "Traceback" not in result.stderr


# -- torchvision ---------------------------------------------------------------------------
def test_torchvision_missing(runner, tmp_path, image_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    ckpt = tmp_path / "dino_resnet50_pretrain.pth"
    ckpt.write_bytes(b"unused")
    result = _extract(
        runner,
        tmp_path / "feats.h5",
        "--images",
        str(image_dir),
        "--model",
        "torchvision:resnet50",
        "--checkpoint",
        str(ckpt),
    )
    assert result.exit_code == 1
    assert (
        "Error: --model torchvision:resnet50 needs the 'torchvision' package, which is not installed" in result.stderr
    )
    assert "Hint: pip install torchvision" in result.stderr


@pytest.fixture
def fake_torchvision(monkeypatch, tinynets):
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.resnet50 = lambda weights=None: tinynets.tiny_classifier()
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)


def test_torchvision_head_replaced_and_checkpoint_loaded(runner, tmp_path, image_dir, tinynets, fake_torchvision):
    ckpt = tmp_path / "dino_resnet50_pretrain.pth"
    trained = _trained_checkpoint(tinynets, ckpt)  # a backbone checkpoint: no fc keys
    store = tmp_path / "feats.h5"
    result = _extract(
        runner,
        store,
        "--images",
        str(image_dir),
        "--model",
        "torchvision:resnet50",
        "--checkpoint",
        str(ckpt),
        fmt="table",
    )
    assert result.exit_code == 0, result.stderr
    assert "model: torchvision:resnet50, classification head 'fc' replaced by identity" in result.stderr
    model = tinynets.tiny_backbone()
    model.load_state_dict(trained)
    with FeatureStore(store) as fs:
        np.testing.assert_allclose(fs.split("train").features[:], _direct_features(model, image_dir), atol=1e-5)
        assert fs.split("train").attrs["head_replaced"] == "fc"


def test_torchvision_without_checkpoint_is_refused(runner, tmp_path, image_dir, fake_torchvision):
    result = _extract(runner, tmp_path / "feats.h5", "--images", str(image_dir), "--model", "torchvision:resnet50")
    assert result.exit_code == 1
    assert (
        "Error: --model torchvision:resnet50 without --checkpoint would extract features of random weights"
        in result.stderr
    )


# -- bad images ----------------------------------------------------------------------------
def test_undecodable_image_names_the_file(runner, tmp_path, image_dir, tinynets):
    bad = image_dir / "dog" / "img2.jpg"
    assert bad.exists()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    store = tmp_path / "feats.h5"
    result = _extract(runner, store, "--images", str(image_dir), "--model", "nnk_tinynets:tiny_backbone")
    assert result.exit_code == 1
    assert f"Error: cannot decode image {bad}: UnidentifiedImageError: cannot identify image file" in result.stderr
    assert "--skip-bad-images" in result.stderr
    assert not store.exists()

    result = _extract(
        runner, store, "--images", str(image_dir), "--model", "nnk_tinynets:tiny_backbone", "--skip-bad-images"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 11 and summary["skipped_images"] == 1 and summary["skipped_files"] == ["dog/img2.jpg"]
    # the rows of the partial run (before the bad image) are discarded, not duplicated
    assert "discarding the interrupted extraction" in result.stderr
    ids = scan_image_folder(image_dir).ids
    with FeatureStore(store) as fs:
        split = fs.split("train")
        assert split.ids == [i for i in ids if i != "dog/img2.jpg"]
        assert split.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 4
        assert split.attrs["skipped_images"] == 1


# -- usage and dependencies ------------------------------------------------------------
def test_without_torch(runner, tmp_path, image_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    result = _extract(runner, tmp_path / "feats.h5", "--images", str(image_dir), "--model", "m:f")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2:] == [
        "Error: model extraction needs the optional 'torch' extra, which is not installed",
        'Hint: pip install "nnkcli[torch]"',
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "IMG", "--image-list", "x.csv", "--model", "m:f"], "give --images or --image-list, not both"),
        (["--images", "IMG"], "--images/--image-list need --model SPEC"),
        (["--images", "IMG", "--model", "m:f", "--strip-prefix", "module."], "--strip-prefix needs --checkpoint"),
        (["--images", "IMG", "--model", "m:f", "--mean", "0.5,0.5"], "expected 3 comma-separated numbers"),
    ],
)
def test_usage_errors(runner, tmp_path, image_dir, args, message):
    (tmp_path / "x.csv").write_text("a.png,1\n")
    args = [str(image_dir) if a == "IMG" else str(tmp_path / a) if a == "x.csv" else a for a in args]
    result = _extract(runner, tmp_path / "feats.h5", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_existing_split_refused_before_extraction(runner, tmp_path, image_dir, tinynets):
    store = tmp_path / "feats.h5"
    args = ["--images", str(image_dir), "--model", "nnk_tinynets:tiny_backbone"]
    assert _extract(runner, store, *args).exit_code == 0
    result = _extract(runner, store, *args)
    assert result.exit_code == 1
    assert f"Error: split 'train' already exists in {store}" in result.stderr
    assert _extract(runner, store, *args, "--overwrite").exit_code == 0


def test_model_output_must_be_pooled(runner, tmp_path, image_dir, tinynets):
    result = _extract(
        runner, tmp_path / "feats.h5", "--images", str(image_dir), "--model", "nnk_tinynets:spatial_backbone"
    )
    assert result.exit_code == 1
    assert (
        "Error: the model's output has shape (1, 4, 10, 10) for 1 images; expected pooled features (n, d)"
        in result.stderr
    )


# -- kill and resume ------------------------------------------------------------------------
def _run_killed(store, image_dir, tmp_path, after_forwards: int) -> Path:
    """Run an extraction in a subprocess whose model hangs in forward pass number
    ``after_forwards + 1``, and SIGKILL it there."""
    log = tmp_path / "forwards.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")])
    env["NNK_TEST_FORWARD_LOG"] = str(log)
    env["NNK_TEST_FORWARD_HANG_AFTER"] = str(after_forwards)
    cmd = [
        sys.executable,
        "-m",
        "nnkcli",
        "extract",
        str(store),
        "--split",
        "train",
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:slow_backbone",
        "--batch-size",
        "2",
        *FAST,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) > after_forwards:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return log


def test_kill_leaves_store_unchanged_and_resume_completes(runner, tmp_path, image_dir, tinynets, monkeypatch):
    store = tmp_path / "feats.h5"
    # an existing split that must survive untouched
    assert (
        _extract(
            runner, store, "--images", str(image_dir), "--model", "nnk_tinynets:tiny_backbone", split="val"
        ).exit_code
        == 0
    )
    before = store.read_bytes()

    # killed in the 4th batch: the probe pass and 3 batches of 2 images have run
    log = _run_killed(store, image_dir, tmp_path, after_forwards=4)
    assert store.read_bytes() == before
    with FeatureStore(store) as fs:
        assert fs.splits == ["val"]
    assert partial_path(store, "train").exists()

    # a resume with different parameters is refused, and keeps the partial run
    result = _extract(
        runner,
        store,
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:slow_backbone",
        "--batch-size",
        "2",
        "--resume",
        "--interpolation",
        "bilinear",
    )
    assert result.exit_code == 1
    assert "Error: the interrupted extraction in" in result.stderr and "different attrs" in result.stderr
    assert partial_path(store, "train").exists()

    monkeypatch.setenv("NNK_TEST_FORWARD_LOG", str(log))
    log.write_text("")
    result = _extract(
        runner,
        store,
        "--images",
        str(image_dir),
        "--model",
        "nnk_tinynets:slow_backbone",
        "--batch-size",
        "2",
        "--resume",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed_rows"] == 6
    # only the 3 remaining batches ran (plus the probe that measures the dimension)
    assert log.read_text().splitlines() == ["1", "2", "2", "2"]
    assert not partial_path(store, "train").exists()

    with FeatureStore(store) as fs:
        assert fs.splits == ["train", "val"]
        np.testing.assert_allclose(fs.split("train").features[:], fs.split("val").features[:], rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            fs.split("train").features[:], _direct_features(tinynets.tiny_backbone(), image_dir), atol=1e-5
        )
        assert fs.split("train").labels.tolist() == fs.split("val").labels.tolist()
        assert fs.split("train").ids == fs.split("val").ids
