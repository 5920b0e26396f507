"""The extraction loop (nnkcli.extract.torch_extract), called as a library."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.extract.images import EvalTransform, load_image, scan_image_folder  # noqa: E402
from nnkcli.extract.torch_extract import extract_image_features, forward_features, resolve_device  # noqa: E402
from nnkcli.storage.store import FeatureStore  # noqa: E402

TRANSFORM = EvalTransform(resize=12, crop=10)


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(5)
    for c in ("a", "b"):
        for i in range(5):
            (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (14 + i, 12 + 2 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    return scan_image_folder(tmp_path / "imgs")


def _oracle(model, samples):
    batch = torch.from_numpy(np.stack([TRANSFORM(load_image(p)) for p in samples.paths]))
    with torch.no_grad():
        return model.eval()(batch).numpy()


def test_library_call_with_a_module_and_progress(tmp_path, samples, tinynets):
    done = []
    model = tinynets.tiny_backbone()
    model.train()  # extraction must switch BatchNorm to its running statistics
    summary = extract_image_features(
        tmp_path / "s.h5",
        "train",
        samples,
        model,
        transform=TRANSFORM,
        device="cpu",
        batch_size=3,
        progress=done.append,
        meta={"epoch": 300},
    )
    assert done == [3, 3, 3, 1]
    assert summary["n"] == 10 and summary["n_images"] == 10 and summary["model"] == "python:TinyNet"
    with FeatureStore(tmp_path / "s.h5") as fs:
        np.testing.assert_allclose(
            fs.split("train").features[:], _oracle(tinynets.tiny_backbone(), samples), rtol=0, atol=1e-5
        )
        assert fs.split("train").attrs["epoch"] == 300


def test_worker_processes_give_the_same_rows_and_report_bad_files(tmp_path, samples, tinynets):
    bad = samples.paths[6]
    bad.write_bytes(b"not an image")
    summary = extract_image_features(
        tmp_path / "s.h5",
        "train",
        samples,
        "nnk_tinynets:tiny_backbone",
        transform=TRANSFORM,
        device="cpu",
        batch_size=4,
        workers=2,
        skip_bad_images=True,
    )
    assert summary["skipped_files"] == [samples.ids[6]]
    keep = [i for i in range(10) if i != 6]
    with FeatureStore(tmp_path / "s.h5") as fs:
        want = _oracle(
            tinynets.tiny_backbone(),
            type(samples)(
                [samples.paths[i] for i in keep],
                [samples.labels[i] for i in keep],
                [samples.ids[i] for i in keep],
                samples.class_names,
                samples.root,
            ),
        )
        np.testing.assert_allclose(fs.split("train").features[:], want, rtol=0, atol=1e-5)
        assert fs.split("train").ids == [samples.ids[i] for i in keep]


def test_meta_cannot_overwrite_provenance(tmp_path, samples, tinynets):
    with pytest.raises(InputError, match=r"--meta model=\.\.\. would overwrite what nnk extract records"):
        extract_image_features(
            tmp_path / "s.h5",
            "train",
            samples,
            "nnk_tinynets:tiny_backbone",
            transform=TRANSFORM,
            device="cpu",
            meta={"model": "x"},
        )
    assert not (tmp_path / "s.h5").exists()


def test_all_zero_features_name_the_image(tmp_path, samples):
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3)

    with pytest.raises(InputError) as info:
        extract_image_features(tmp_path / "s.h5", "train", samples, Zero(), transform=TRANSFORM, device="cpu")
    assert info.value.message == (
        f"the model gave all-zero features for 10 images, first {samples.ids[0]}; "
        "cosine similarity is undefined for them"
    )


def test_fp16_needs_cuda(tmp_path, samples, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="--fp16 needs a CUDA device"):
        extract_image_features(tmp_path / "s.h5", "train", samples, "m:f", transform=TRANSFORM, fp16=True)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="--device cuda: CUDA is not available to this torch build"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    with pytest.raises(InputError, match="--device must be auto, cpu or cuda"):
        resolve_device("tpu")


def test_forward_features_shapes():
    x = torch.randn(2, 3, 4, 4)
    pooled = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 4))  # (n, 5, 1, 1)
    out = forward_features(pooled.eval(), x)
    assert out.shape == (2, 5) and out.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(out, pooled(x).flatten(1).numpy())

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(InputError, match="the model returned a tuple, not a tensor of features"):
        forward_features(Pair(), x)


def test_resume_after_interrupt_accounts_for_skipped_images(tmp_path, samples, tinynets, caplog):
    """Rows carry ids, so images skipped before the interruption are found again on resume."""
    for i in (1, 6):
        samples.paths[i].write_bytes(b"broken")
    store = tmp_path / "s.h5"
    kwargs = dict(transform=TRANSFORM, device="cpu", batch_size=2, skip_bad_images=True)

    calls = []

    def interrupt_after_4_batches(n):
        calls.append(n)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_image_features(
            store, "train", samples, "nnk_tinynets:tiny_backbone", progress=interrupt_after_4_batches, **kwargs
        )
    assert "rerun with --resume to continue" in caplog.text
    assert not store.exists()

    done = []
    summary = extract_image_features(
        store, "train", samples, "nnk_tinynets:tiny_backbone", resume=True, progress=done.append, **kwargs
    )
    # 8 images were consumed (2 of them bad) -> 6 rows kept, resume at image 8
    assert summary["resumed_rows"] == 6 and done == [8, 2]
    assert summary["skipped_images"] == 2
    assert summary["skipped_files"] == [samples.ids[1], samples.ids[6]]
    full = extract_image_features(tmp_path / "full.h5", "train", samples, "nnk_tinynets:tiny_backbone", **kwargs)
    assert full["n"] == summary["n"] == 8
    with FeatureStore(store) as a, FeatureStore(tmp_path / "full.h5") as b:
        np.testing.assert_allclose(a.split("train").features[:], b.split("train").features[:], rtol=0, atol=1e-6)
        assert a.split("train").ids == b.split("train").ids
        assert a.split("train").attrs["skipped_images"] == 2
