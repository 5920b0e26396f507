"""Model specs and head replacement (nnkcli.extract.models)."""

from __future__ import annotations

import sys
import types
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.extract.models import build_model, parse_model_spec, replace_head  # noqa: E402


@pytest.fixture
def fake_torchvision(monkeypatch, tinynets):
    """A stand-in ``torchvision`` whose ``models`` hold tiny architectures."""
    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    calls = []

    def resnet18(weights="DEFAULT"):
        calls.append(weights)
        return tinynets.tiny_classifier()

    class ViTLike(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.body = nn.Linear(5, 4)
            self.heads = nn.Sequential()
            self.heads.add_module("head", nn.Linear(4, 3))

        def forward(self, x):
            return self.heads(self.body(x))

    class ConvNeXtLike(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.body = nn.Linear(5, 4)
            self.classifier = nn.Sequential(nn.LayerNorm(4), nn.Flatten(1), nn.Linear(4, 3))

        def forward(self, x):
            return self.classifier(self.body(x))

    class Headless(nn.Module):
        def forward(self, x):
            return x

    tv_models.resnet18 = resnet18
    tv_models.vit_like = lambda weights=None: ViTLike()
    tv_models.convnext_like = lambda weights=None: ConvNeXtLike()
    tv_models.headless = lambda weights=None: Headless()
    tv.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    return calls


# -- specs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, kind, target",
    [
        ("torchvision:resnet50", "torchvision", "resnet50"),
        ("torchscript:/tmp/m.pt", "torchscript", "/tmp/m.pt"),
        ("mypkg.nets:make", "factory", "mypkg.nets:make"),
        ("timm:vit_small_patch14_dinov2", "timm", "vit_small_patch14_dinov2"),
        ("hf:models/dinov2-small", "hf", "models/dinov2-small"),
    ],
)
def test_parse_model_spec(text, kind, target):
    spec = parse_model_spec(text)
    assert (spec.kind, spec.target, spec.text) == (kind, target, text)
    assert spec.needs_checkpoint == (kind in ("torchvision", "timm"))


def test_timm_spec_arguments_are_python_literals_with_bracketed_commas():
    spec = parse_model_spec("timm:resnet18, layers=(1,1,1,1),drop_rate=0.1,act_layer=gelu,dims=[8, 16]")
    assert spec.target == "resnet18"
    assert dict(spec.options) == {"layers": (1, 1, 1, 1), "drop_rate": 0.1, "act_layer": "gelu", "dims": [8, 16]}
    with pytest.raises(InputError, match="'2=x' is not a key=value argument"):
        parse_model_spec("timm:resnet18,2=x")


@pytest.mark.parametrize("text", ["resnet50", "torchvision:", ":make", ""])
def test_parse_model_spec_rejects(text):
    with pytest.raises(InputError, match="is not a model spec"):
        parse_model_spec(text)


# -- torchvision -------------------------------------------------------------------
def test_torchvision_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(InputError) as info:
        build_model("torchvision:resnet50")
    assert "needs the 'torchvision' package, which is not installed" in info.value.message
    assert "pip install torchvision" in info.value.hint


def test_torchvision_resnet_head_becomes_identity(fake_torchvision, tinynets):
    loaded = build_model("torchvision:resnet18")
    assert fake_torchvision == [None]  # never asks torchvision for downloaded weights
    assert loaded.head_replaced == "fc"
    assert isinstance(loaded.module.fc, nn.Identity)
    reference = tinynets.tiny_classifier().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = loaded.module.eval()(x)
        want = reference.features(x)
    assert got.shape == (2, tinynets.FEATURE_DIM)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the head's weights are no longer model keys: a backbone checkpoint suffices
    assert not any(k.startswith("fc.") for k in loaded.module.state_dict())


def test_torchvision_sequential_heads_keep_layers_before_the_linear(fake_torchvision):
    x = torch.randn(3, 5)
    vit = build_model("torchvision:vit_like")
    assert vit.head_replaced == "heads.head"
    with torch.no_grad():
        torch.testing.assert_close(vit.module(x), vit.module.body(x))

    convnext = build_model("torchvision:convnext_like")
    assert convnext.head_replaced == "classifier.2"
    m = convnext.module
    with torch.no_grad():
        # LayerNorm stays: the feature is the normalised pooled vector, as ConvNeXt's
        want = nn.functional.layer_norm(m.body(x), (4,), m.classifier[0].weight, m.classifier[0].bias)
        torch.testing.assert_close(m(x), want)


def test_torchvision_without_head_is_refused(fake_torchvision):
    with pytest.raises(InputError, match="cannot find the classification head of Headless"):
        build_model("torchvision:headless")


def test_torchvision_unknown_name_suggests(fake_torchvision):
    with pytest.raises(InputError, match="torchvision has no model named 'resnet81'") as info:
        build_model("torchvision:resnet81")
    assert "resnet18" in info.value.hint


def test_replace_head_on_linear_attribute():
    model = nn.Module()
    model.classifier = nn.Linear(2, 2)
    assert replace_head(model) == "classifier"
    assert isinstance(model.classifier, nn.Identity)


# -- factories and TorchScript ---------------------------------------------------
def test_factory_spec_builds_the_module(tinynets):
    loaded = build_model("nnk_tinynets:tiny_backbone")
    assert loaded.head_replaced is None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(x), tinynets.tiny_backbone().eval()(x))


def test_factory_from_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_nets_for_test.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(2, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_nets_for_test", raising=False)
    assert isinstance(build_model("cwd_nets_for_test:make").module, nn.Linear)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("nnk_tinynets:nope", "module 'nnk_tinynets' has no attribute 'nope'"),
        ("nnk_tinynets:FEATURE_DIM", "'FEATURE_DIM' is not callable"),
        ("nnk_tinynets:not_a_module", "the factory returned dict, not a torch.nn.Module"),
        ("nnk_tinynets:broken_factory", "the factory raised RuntimeError: factory exploded"),
    ],
)
def test_factory_errors(tinynets, spec, message):
    with pytest.raises(InputError) as info:
        build_model(spec)
    assert info.value.message == f"--model {spec}: {message}" or message in info.value.message


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_spec_loads(tmp_path, tinynets):
    path = tmp_path / "tiny.pt"
    torch.jit.script(tinynets.tiny_backbone().eval()).save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading says nothing: TorchScript's deprecation is not the user's to act on
        loaded = build_model(f"torchscript:{path}")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), tinynets.tiny_backbone().eval()(x))


def test_torchscript_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        build_model(f"torchscript:{tmp_path / 'missing.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match="cannot load the TorchScript file"):
        build_model(f"torchscript:{junk}")


def test_torch_and_pil_are_imported_only_when_extracting():
    import subprocess

    code = (
        "import sys, nnkcli.extract.models, nnkcli.extract.images, nnkcli.extract.torch_checkpoints\n"
        "from nnkcli.cli import main\n"
        "try:\n    main(['extract', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'PIL' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--checkpoint-key" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False False"
