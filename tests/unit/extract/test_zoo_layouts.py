"""timm and Hugging Face models, and the official SSL checkpoint layouts (nnkcli.extract.timm_models,
hf_models, checkpoint_keys, features).

Each layout is written here as its training script saves it (the key nesting and prefixes are
taken from the sources named in the docs' layout table), from a randomly initialised timm model;
the extraction must equal that model's own forward of the same transformed images. Slow: timm
and transformers take seconds to import.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
timm = pytest.importorskip("timm", exc_type=ImportError)

from nnkcli.errors import InputError, StoreError  # noqa: E402
from nnkcli.extract.images import EvalTransform, load_image, scan_image_folder  # noqa: E402
from nnkcli.extract.torch_extract import extract_image_features  # noqa: E402
from nnkcli.storage.store import FeatureStore  # noqa: E402

pytestmark = pytest.mark.slow

CROP = 32
TRANSFORM = EvalTransform(resize=36, crop=CROP)
VIT = "vit_tiny_patch16_224"
VIT_ARGS = dict(depth=4, embed_dim=48, num_heads=3, img_size=CROP)
VIT_SPEC = f"timm:{VIT},depth=4,embed_dim=48,num_heads=3"
RESNET_ARGS = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
RESNET_SPEC = "timm:resnet18,layers=(1,1,1,1),channels=(8,16,32,64)"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (37 + 5 * i, 41 + 3 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return scan_image_folder(root)


@pytest.fixture(scope="module")
def batch(samples):
    return torch.from_numpy(np.stack([TRANSFORM(load_image(p)) for p in samples.paths]))


def _random(name, seed, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():  # timm zero-initialises some tensors (cls token, biases): make every one count
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn_like(tensor))
    return model


def _forward(model, batch):
    with torch.no_grad():
        return model.eval()(batch).numpy()


def _extract(tmp_path, samples, spec, checkpoint=None, **kwargs):
    store = tmp_path / "s.h5"
    kwargs.setdefault("transform", TRANSFORM)
    extract_image_features(store, "train", samples, spec, checkpoint=checkpoint, device="cpu", workers=0, **kwargs)
    with FeatureStore(store) as fs:
        return fs.split("train").features[:], dict(fs.split("train").attrs)


def _prefixed(state, prefix):
    return {prefix + k: v.clone() for k, v in state.items()}


def _other(state):
    """The same keys with other values (a momentum encoder, a student): picking it must fail the oracle."""
    return {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}


# -- the layouts, as their training scripts save them ------------------------------------------------
def dino_training(sd):  # main_dino.py: student (DDP), teacher (MultiCropWrapper: backbone + head), epoch, args
    head = {"head.mlp.0.weight": torch.zeros(8, 4), "head.last_layer.weight_g": torch.ones(16, 1)}
    return {
        "student": {**_prefixed(_other(sd), "module.backbone."), "module.head.mlp.0.weight": torch.zeros(8, 4)},
        "teacher": {**_prefixed(sd, "backbone."), **head},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_tiny"),
    }


def dino_release(sd):  # dino_deitsmall16_pretrain.pth: the teacher backbone's state dict
    return dict(sd)


def ibot_training(sd):  # main_ibot.py l. 349-350; its ViT adds masked_embed (models/vision_transformer.py l. 172)
    extra = {"masked_embed": torch.zeros(1, sd["cls_token"].shape[-1])}
    return {
        "student": _prefixed({**_other(sd), **extra}, "module.backbone."),
        "teacher": {**_prefixed({**sd, **extra}, "backbone."), "head.last_layer2.weight": torch.zeros(4, 4)},
        "epoch": 10,
    }


def mocov3(sd, head):  # main_moco.py l. 310-316; builder.py: base/momentum encoders, predictor
    return {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": {
            **_prefixed(sd, "module.base_encoder."),
            f"module.base_encoder.{head}.0.weight": torch.zeros(8, 4),
            **_prefixed(_other(sd), "module.momentum_encoder."),
            f"module.momentum_encoder.{head}.0.weight": torch.zeros(8, 4),
            "module.predictor.0.weight": torch.zeros(4, 4),
        },
    }


def mae(sd):  # main_pretrain.py / util/misc.py l. 301-302: {'model': encoder + decoder}
    dim = sd["cls_token"].shape[-1]
    decoder = {
        "mask_token": torch.zeros(1, 1, dim),
        "decoder_embed.weight": torch.zeros(dim, dim),
        "decoder_blocks.0.norm1.weight": torch.ones(dim),
        "decoder_pred.weight": torch.zeros(768, dim),
    }
    return {"model": {**sd, **decoder}, "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny")}


def solo_learn(sd):  # a Lightning checkpoint; main_linear.py l. 74-82 reads state_dict and strips backbone.
    return {
        "epoch": 399,
        "global_step": 1000,
        "state_dict": {
            **_prefixed(sd, "backbone."),
            **_prefixed(_other(sd), "momentum_backbone."),
            "projector.0.weight": torch.zeros(8, 4),
            "classifier.weight": torch.zeros(10, 4),
        },
    }


VIT_LAYOUTS = {
    "dino-training": dino_training,
    "dino-release": dino_release,
    "ibot": ibot_training,
    "mocov3-vit": lambda sd: mocov3(sd, "head"),
    "mae": mae,
    "solo-learn-vit": solo_learn,
}


@pytest.mark.parametrize("layout", list(VIT_LAYOUTS))
def test_vit_layouts_load_and_equal_timms_forward(tmp_path, samples, batch, layout):
    model = _random(VIT, 1, **VIT_ARGS)
    torch.save(VIT_LAYOUTS[layout](model.state_dict()), tmp_path / "ck.pth")
    got, attrs = _extract(tmp_path, samples, VIT_SPEC, tmp_path / "ck.pth")
    np.testing.assert_allclose(got, _forward(model, batch), rtol=1e-5, atol=1e-5)
    assert attrs["model"] == VIT_SPEC


RESNET_LAYOUTS = {
    "mocov3-resnet": lambda sd: mocov3(sd, "fc"),
    "solo-learn-resnet": solo_learn,
    "torchvision-style": dict,
}


@pytest.mark.parametrize("layout", list(RESNET_LAYOUTS))
def test_resnet_layouts_load_and_equal_timms_forward(tmp_path, samples, batch, layout):
    model = _random("resnet18", 2, **RESNET_ARGS)
    torch.save(RESNET_LAYOUTS[layout](model.state_dict()), tmp_path / "ck.pth")
    got, _ = _extract(tmp_path, samples, RESNET_SPEC, tmp_path / "ck.pth")
    np.testing.assert_allclose(got, _forward(model, batch), rtol=1e-5, atol=1e-5)


def test_lightly_sequential_backbone_loads_by_child_position(tmp_path, samples, batch):
    model = _random("resnet18", 4, **RESNET_ARGS)
    # lightly's examples: backbone = nn.Sequential(*list(resnet.children())[:-1]) (examples/pytorch/simclr.py l. 30)
    backbone = torch.nn.Sequential(*list(model.children())[:-1])
    state = {
        **_prefixed(backbone.state_dict(), "backbone."),
        "projection_head.layers.0.weight": torch.zeros(8, 64),
    }
    assert "backbone.4.0.conv1.weight" in state  # the layout really is positional
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ck.pth")
    got, attrs = _extract(tmp_path, samples, RESNET_SPEC, tmp_path / "ck.pth")
    np.testing.assert_allclose(got, _forward(model, batch), rtol=1e-5, atol=1e-5)
    assert attrs["checkpoint_conversion"].startswith("child positions")


def _dinov2_layout(model):
    """DINOv2's released backbone with registers (dinov2/models/vision_transformer.py): register_tokens,
    a cls token whose position embedding is the first row of pos_embed, and mask_token.
    timm's model adds that row into its cls token; written here the other way round."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    first_row = 0.1 * torch.randn(1, 1, sd["cls_token"].shape[-1])
    sd["register_tokens"] = sd.pop("reg_token")
    sd["cls_token"] = sd["cls_token"] - first_row
    sd["pos_embed"] = torch.cat([first_row, sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return sd


DINOV2_ARGS = dict(depth=2, embed_dim=48, num_heads=3)
DINOV2_SPEC = "timm:vit_small_patch14_reg4_dinov2,depth=2,embed_dim=48,num_heads=3"


def test_dinov2_with_registers_converts_through_timms_own_filter(tmp_path, samples):
    transform = EvalTransform(resize=32, crop=28)
    model = _random("vit_small_patch14_reg4_dinov2", 5, img_size=28, **DINOV2_ARGS)
    torch.save(_dinov2_layout(model), tmp_path / "ck.pth")
    got, attrs = _extract(tmp_path, samples, DINOV2_SPEC, tmp_path / "ck.pth", transform=transform)
    images = torch.from_numpy(np.stack([transform(load_image(p)) for p in samples.paths]))
    np.testing.assert_allclose(got, _forward(model, images), rtol=1e-5, atol=1e-5)
    assert attrs["checkpoint_conversion"] == "timm's vision_transformer.checkpoint_filter_fn"


def test_dinov2_position_embeddings_resampled_to_the_crop_as_timm_does_at_forward(tmp_path, samples):
    # released at 518 px, evaluated at 224: here saved for 56 px (4x4 patches), extracted at 28 (2x2)
    transform = EvalTransform(resize=32, crop=28)
    args = dict(depth=2, embed_dim=48, num_heads=3)
    saved = _random("vit_small_patch14_dinov2", 6, img_size=56, **args)
    sd = {**saved.state_dict(), "mask_token": torch.zeros(1, 48)}
    torch.save(sd, tmp_path / "ck.pth")
    got, _ = _extract(
        tmp_path,
        samples,
        "timm:vit_small_patch14_dinov2,depth=2,embed_dim=48,num_heads=3",
        tmp_path / "ck.pth",
        transform=transform,
    )
    # the oracle: the 56-px model resampling its embeddings at each forward (dynamic_img_size)
    oracle = _random("vit_small_patch14_dinov2", 6, img_size=56, dynamic_img_size=True, **args)
    oracle.load_state_dict(saved.state_dict())
    images = torch.from_numpy(np.stack([transform(load_image(p)) for p in samples.paths]))
    np.testing.assert_allclose(got, _forward(oracle, images), rtol=1e-4, atol=1e-4)


# -- which features ------------------------------------------------------------------------------
def _tokens(model, batch):
    """DINO's get_intermediate_layers (vision_transformer.py l. 225-232), written out: the final norm of
    every block's output."""
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(batch)))
        out = []
        for block in model.blocks:
            x = block(x)
            out.append(model.norm(x))
    return out


@pytest.mark.parametrize("features", ["cls", "avgpool", "cls+avgpool", "last4"])
def test_vit_features_equal_the_tokens_computed_block_by_block(tmp_path, samples, batch, features):
    model = _random(VIT, 7, **VIT_ARGS)
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    got, attrs = _extract(tmp_path, samples, VIT_SPEC, tmp_path / "ck.pth", features=features)
    layers = _tokens(model, batch)
    cls, mean = layers[-1][:, 0], layers[-1][:, 1:].mean(dim=1)
    expected = {
        "cls": cls,
        "avgpool": mean,
        "cls+avgpool": torch.cat([cls, mean], dim=1),
        "last4": torch.cat([t[:, 0] for t in layers[-4:]], dim=1),
    }[features]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert attrs["features"] == features
    if features == "cls":  # timm's pooled output of a class-token ViT is that token
        np.testing.assert_allclose(got, _forward(model, batch), rtol=1e-5, atol=1e-5)
    if features == "last4":  # and timm's own intermediate layers agree
        with torch.no_grad():
            inter = model.get_intermediate_layers(batch, n=4, return_prefix_tokens=True, norm=True)
        np.testing.assert_allclose(got, torch.cat([p[:, 0] for _, p in inter], dim=1).numpy(), atol=1e-5)


def test_layer_hook_on_a_resnet(tmp_path, samples, batch):
    model = _random("resnet18", 8, **RESNET_ARGS)
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    got, attrs = _extract(tmp_path, samples, RESNET_SPEC, tmp_path / "ck.pth", layer="layer3")
    with torch.no_grad():
        x = model.maxpool(model.act1(model.bn1(model.conv1(batch))))
        x = model.layer3(model.layer2(model.layer1(x)))
    np.testing.assert_allclose(got, x.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    assert attrs["layer"] == "layer3"


def test_protocol_dino_takes_the_class_token_of_a_vit_and_the_output_of_a_resnet(tmp_path, samples):
    vit = _random(VIT, 9, **VIT_ARGS)
    torch.save(vit.state_dict(), tmp_path / "ck.pth")
    dino = EvalTransform(resize=36, crop=CROP)  # the preset's interpolation and normalisation, a small crop
    got, attrs = _extract(tmp_path, samples, VIT_SPEC, tmp_path / "ck.pth", protocol="dino", transform=dino)
    assert attrs["protocol"] == "dino" and attrs["features"] == "cls"
    images = torch.from_numpy(np.stack([dino(load_image(p)) for p in samples.paths]))
    np.testing.assert_allclose(got, _tokens(vit, images)[-1][:, 0].numpy(), rtol=1e-5, atol=1e-5)
    resnet = _random("resnet18", 9, **RESNET_ARGS)
    torch.save(resnet.state_dict(), tmp_path / "r.pth")
    (tmp_path / "s.h5").unlink()
    got, attrs = _extract(tmp_path, samples, RESNET_SPEC, tmp_path / "r.pth", protocol="dino", transform=dino)
    assert attrs["protocol"] == "dino" and "features" not in attrs  # the model's own output
    np.testing.assert_allclose(got, _forward(resnet, images), rtol=1e-5, atol=1e-5)


def test_resume_continues_a_timm_extraction_and_refuses_other_features(tmp_path, samples, batch):
    model = _random(VIT, 14, **VIT_ARGS)
    torch.save(dino_training(model.state_dict()), tmp_path / "ck.pth")
    store = tmp_path / "s.h5"
    kwargs = dict(checkpoint=tmp_path / "ck.pth", transform=TRANSFORM, device="cpu", batch_size=2, features="avgpool")

    def interrupt_after_one_batch(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_image_features(store, "train", samples, VIT_SPEC, progress=interrupt_after_one_batch, **kwargs)
    with pytest.raises(StoreError, match="different attrs"):  # other features (of the same width)
        extract_image_features(store, "train", samples, VIT_SPEC, resume=True, **{**kwargs, "features": "cls"})
    summary = extract_image_features(store, "train", samples, VIT_SPEC, resume=True, **kwargs)
    assert summary["resumed_rows"] == 2 and summary["n"] == len(samples)
    with FeatureStore(store) as fs:
        expected = _tokens(model, batch)[-1][:, 1:].mean(dim=1)
        np.testing.assert_allclose(fs.split("train").features[:], expected.numpy(), rtol=1e-5, atol=1e-5)


# -- refusals -----------------------------------------------------------------------------------
def test_a_checkpoint_missing_one_backbone_key_is_refused_naming_it(tmp_path, samples):
    model = _random(VIT, 10, **VIT_ARGS)
    ck = dino_training(model.state_dict())
    del ck["teacher"]["backbone.blocks.2.mlp.fc2.bias"]
    torch.save(ck, tmp_path / "ck.pth")
    with pytest.raises(InputError) as err:
        _extract(tmp_path, samples, VIT_SPEC, tmp_path / "ck.pth")
    assert "lacks 1 of the model's" in err.value.message
    assert err.value.message.count("blocks.2.mlp.fc2.bias") == 1
    assert "left over in the checkpoint: head.* (2)" in err.value.message
    assert not (tmp_path / "s.h5").exists()


def test_a_checkpoint_of_another_depth_names_the_blocks_left_over(tmp_path, samples):
    deeper = _random(VIT, 11, **{**VIT_ARGS, "depth": 5})
    torch.save(deeper.state_dict(), tmp_path / "ck.pth")
    model = _random(VIT, 11, **VIT_ARGS)
    from nnkcli.extract.torch_checkpoints import load_checkpoint

    report = load_checkpoint(model, tmp_path / "ck.pth")  # every parameter present: loads, the rest is named
    assert {k.split(".")[1] for k in report.unexpected} == {"4"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:vit_tiny_patch16_225", "timm has no architecture named 'vit_tiny_patch16_225'"),
        ("timm:resnet18,pretrained=True", "pretrained=True would download weights"),
        ("timm:resnet18,depth", "'depth' is not a key=value argument"),
        ("timm:resnet18,no_such_arg=1", "timm cannot build it (TypeError"),
    ],
)
def test_bad_timm_specs(tmp_path, samples, spec, message):
    torch.save({}, tmp_path / "ck.pth")
    with pytest.raises(InputError, match=None) as err:
        _extract(tmp_path, samples, spec, tmp_path / "ck.pth")
    assert message in err.value.message


def test_features_of_a_model_without_tokens_are_refused(tmp_path, samples):
    model = _random("resnet18", 12, **RESNET_ARGS)
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    with pytest.raises(InputError, match="--features cls needs a Vision Transformer"):
        _extract(tmp_path, samples, RESNET_SPEC, tmp_path / "ck.pth", features="cls")


# -- Hugging Face ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=CROP, patch_size=16
    )
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(13)
    with_pooler = transformers.ViTModel(config).eval()
    with_pooler.save_pretrained(root / "vit")
    without = transformers.ViTModel(config, add_pooling_layer=False).eval()
    without.save_pretrained(root / "vit-nopool")
    return {"vit": (root / "vit", with_pooler), "vit-nopool": (root / "vit-nopool", without)}


def test_hf_folder_loads_offline_and_gives_the_pooler_output(tmp_path, samples, batch, hf_dirs, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder, model = hf_dirs["vit"]
    got, attrs = _extract(tmp_path, samples, f"hf:{folder}")
    with torch.no_grad():
        out = model(pixel_values=batch)
    np.testing.assert_allclose(got, out.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    assert attrs["model"] == f"hf:{folder}"
    import os

    assert "HF_HUB_OFFLINE" not in os.environ  # set for the load only


@pytest.mark.parametrize("features", ["cls", "last4"])
def test_hf_vit_features(tmp_path, samples, batch, hf_dirs, features):
    folder, model = hf_dirs["vit"]
    got, _ = _extract(tmp_path, samples, f"hf:{folder}", features=features)
    with torch.no_grad():
        out = model(pixel_values=batch, output_hidden_states=True)
        if features == "cls":
            expected = out.last_hidden_state[:, 0]
        else:  # hidden_states[i] is block i's output before the final norm (hidden_states[0]: the embeddings)
            expected = torch.cat([model.layernorm(h)[:, 0] for h in out.hidden_states[-4:]], dim=1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_hf_folder_saved_without_pooler_gives_the_class_token(tmp_path, samples, batch, hf_dirs):
    folder, model = hf_dirs["vit-nopool"]
    got, _ = _extract(tmp_path, samples, f"hf:{folder}")
    with torch.no_grad():
        np.testing.assert_allclose(got, model(pixel_values=batch).last_hidden_state[:, 0].numpy(), atol=1e-5)


def test_hf_refuses_a_hub_name_and_a_checkpoint(tmp_path, samples, hf_dirs):
    with pytest.raises(InputError, match="no config.json") as err:
        _extract(tmp_path, samples, "hf:facebook/dinov2-small")
    assert "never downloads" in err.value.hint
    torch.save({}, tmp_path / "ck.pth")
    with pytest.raises(InputError, match="takes its weights from the folder"):
        _extract(tmp_path, samples, f"hf:{hf_dirs['vit'][0]}", tmp_path / "ck.pth")
