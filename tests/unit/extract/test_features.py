"""Which features a model gives: --features and --layer (nnkcli.extract.features), on torch-only toy
models; the timm and transformers models are in test_zoo_layouts.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.extract.features import FeatureModel, token_parts  # noqa: E402


@pytest.fixture
def images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _blocks_by_hand(model, x):
    """Every block's output, each through the final norm: DINO's get_intermediate_layers, written out."""
    x = model.tokens(x)
    out = []
    for block in model.blocks:
        x = x + block.mlp(x)
        out.append(model.norm(x))
    return out


@pytest.mark.parametrize("features", ["output", "cls", "avgpool", "cls+avgpool", "last4"])
def test_vit_features_equal_the_tokens_block_by_block(tinynets, images, features):
    model = tinynets.toy_vit().eval()
    with torch.no_grad():
        got = FeatureModel(model, features)(images)
        layers = _blocks_by_hand(model, images)
    last = layers[-1]
    patches = last[:, 1 + model.num_register_tokens :]  # the class token and 2 registers come first
    expected = {
        "output": last[:, 0],
        "cls": last[:, 0],
        "avgpool": patches.mean(dim=1),
        "cls+avgpool": torch.cat([last[:, 0], patches.mean(dim=1)], dim=1),
        "last4": torch.cat([t[:, 0] for t in layers[-4:]], dim=1),
    }[features]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_token_parts_finds_the_norm_blocks_and_prefix_tokens(tinynets):
    model = tinynets.toy_vit()
    norm, blocks, n_prefix = token_parts(model)
    assert norm is model.norm and blocks is model.blocks and n_prefix == 3
    assert token_parts(tinynets.tiny_backbone()) is None


def test_layer_hook_pools_a_feature_map_and_picks_tokens(tinynets, images):
    net = tinynets.tiny_backbone().eval()
    with torch.no_grad():
        got = FeatureModel(net, layer="relu")(images)
        torch.testing.assert_close(got, net.relu(net.bn1(net.conv1(images))).mean(dim=(2, 3)))
        vit = tinynets.toy_vit().eval()
        third = FeatureModel(vit, "avgpool", layer="blocks.2")(images)
        x = vit.tokens(images)
        for block in list(vit.blocks)[:3]:
            x = x + block.mlp(x)
        torch.testing.assert_close(third, x[:, 3:].mean(dim=1))  # the third block's tokens, no final norm


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(features="cls"), "--features cls needs a Vision Transformer"),
        (dict(layer="fc2"), "--layer fc2: TinyNet has no sub-module of that name"),
        (dict(features="last4", layer="relu"), "cannot be combined with --layer"),
        (dict(features="pool"), "--features must be one of"),
    ],
)
def test_refusals(tinynets, kwargs, message):
    with pytest.raises(InputError, match=message):
        FeatureModel(tinynets.tiny_backbone(), **kwargs)


def test_a_preset_falls_back_to_the_output_of_a_model_without_tokens(tinynets, images):
    net = tinynets.tiny_backbone().eval()
    wrapped = FeatureModel(net, "cls", fallback=True)
    assert wrapped.features == "output"
    with torch.no_grad():
        torch.testing.assert_close(wrapped(images), net(images))


def test_token_output_of_a_layer_needs_a_choice(tinynets, images):
    with pytest.raises(InputError, match="--layer norm gives tokens"):
        FeatureModel(tinynets.toy_vit(), layer="norm")(images)
