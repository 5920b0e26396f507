"""Strict checkpoint loading: nesting, prefixes, missing keys, corrupt files
(nnkcli.extract.torch_checkpoints)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import types

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from nnkcli.errors import InputError  # noqa: E402
from nnkcli.extract.checkpoint_keys import (  # noqa: E402
    detect_prefix,
    fit_state_dict,
    strip_prefixes,
    summarize_keys,
)
from nnkcli.extract.torch_checkpoints import find_state_dict, load_checkpoint  # noqa: E402

# -- prefixes and nesting -----------------------------------------------------------
MODEL_KEYS = ["conv1.weight", "conv1.bias", "bn1.weight", "layer1.0.conv.weight"]


@pytest.mark.parametrize(
    "prefix",
    ["", "module.", "backbone.", "module.encoder_q.", "trunk._feature_blocks.", "module.backbone."],
)
def test_detect_prefix_finds_each_prefix(prefix):
    ckpt = [prefix + k for k in MODEL_KEYS] + [prefix + "head.mlp.0.weight", "queue"]
    assert detect_prefix(ckpt, MODEL_KEYS) == prefix


def test_detect_prefix_prefers_query_encoder_over_momentum_encoder(caplog):
    ckpt = ["module.momentum_encoder." + k for k in MODEL_KEYS] + ["module.base_encoder." + k for k in MODEL_KEYS]
    with caplog.at_level(logging.INFO, logger="nnkcli"):
        assert detect_prefix(ckpt, MODEL_KEYS) == "module.base_encoder."
    assert "equally well" in caplog.text
    ckpt = ["module.encoder_k." + k for k in MODEL_KEYS] + ["module.encoder_q." + k for k in MODEL_KEYS]
    assert detect_prefix(ckpt, MODEL_KEYS) == "module.encoder_q."


def test_detect_prefix_keeps_exact_keys_on_a_tie():
    ckpt = MODEL_KEYS + ["ema." + k for k in MODEL_KEYS]
    assert detect_prefix(ckpt, MODEL_KEYS) == ""


def test_strip_prefixes_counts_and_keeps_others():
    state = {"module.a": 1, "module.b": 2, "head.c": 3}
    out, counts = strip_prefixes(state, ["module."])
    assert out == {"a": 1, "b": 2, "head.c": 3}
    assert counts == {"module.": 2}
    out, counts = strip_prefixes({"module.backbone.a": 1}, ["module.", "backbone."])
    assert out == {"a": 1} and counts == {"module.": 1, "backbone.": 1}


def test_find_state_dict_nested():
    t = torch.zeros(1)
    sd = {"w": t}
    assert find_state_dict(sd) == (sd, None)
    assert find_state_dict({"epoch": 3, "state_dict": sd})[1] == "state_dict"
    # DINO: teacher is preferred over student
    assert find_state_dict({"student": {"s": t}, "teacher": sd, "args": argparse.Namespace()})[0] == sd
    vissl = {"classy_state_dict": {"base_model": {"model": {"trunk": sd, "heads": {"h": t}}}}}
    assert find_state_dict(vissl) == (sd, "classy_state_dict.base_model.model.trunk")
    assert find_state_dict({"student": {"s": t}, "teacher": sd}, key="student") == ({"s": t}, "student")
    assert find_state_dict({"a": {"b": sd}}, key="a.b") == (sd, "a.b")


def test_find_state_dict_errors():
    with pytest.raises(InputError, match="cannot find the model's state dict in the checkpoint") as info:
        find_state_dict({"weights_here": {"w": torch.zeros(1)}, "epoch": 1})
    assert "weights_here" in info.value.hint
    with pytest.raises(InputError, match="--checkpoint-key 'nope' is not in the checkpoint"):
        find_state_dict({"model": {"w": torch.zeros(1)}}, key="nope")
    with pytest.raises(InputError, match=r"checkpoint\['epoch'\] is not a dict of tensors"):
        find_state_dict({"epoch": 3}, key="epoch")
    with pytest.raises(InputError, match="holds a list, not a dict of tensors"):
        find_state_dict([torch.zeros(1)])


def test_summarize_keys():
    keys = ["head.mlp.0.weight", "head.mlp.0.bias", "head.last.weight", "fc.weight", "fc.bias", "queue"]
    assert summarize_keys(keys) == "head.* (3), fc.* (2), queue"


# -- loading ------------------------------------------------------------------------
def _trained_state(tinynets):
    """Backbone weights different from the factory's initialisation."""
    torch.manual_seed(123)
    donor = tinynets.TinyNet()
    with torch.no_grad():
        donor.bn1.running_mean.uniform_(-1, 1)
    donor.fc = nn.Identity()
    return donor.state_dict()


def test_load_checkpoint_module_prefix_nested_under_state_dict(tmp_path, tinynets, caplog):
    trained = _trained_state(tinynets)
    ckpt = {
        "epoch": 100,
        "args": argparse.Namespace(arch="tiny", lr=0.1),  # as DINO/MoCo save them
        "state_dict": {
            **{f"module.{k}": v for k, v in trained.items()},
            "module.head.mlp.weight": torch.zeros(2, 2),
            "module.head.mlp.bias": torch.zeros(2),
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
    }
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    model = tinynets.tiny_backbone()
    with caplog.at_level(logging.INFO, logger="nnkcli"):
        report = load_checkpoint(model, path)
    assert report.key == "state_dict"
    assert report.stripped == {"module.": len(trained) + 2}
    assert report.unexpected == ["head.mlp.weight", "head.mlp.bias"]
    assert report.n_loaded == len(trained)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)
    assert "stripped prefix 'module.' from 9 keys" in caplog.text
    assert "ignored 2 keys the model does not have: head.* (2)" in caplog.text


def test_load_checkpoint_explicit_key_and_prefix(tmp_path, tinynets):
    trained = _trained_state(tinynets)
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in trained.items()}, "student": {"x": torch.zeros(1)}}
    path = tmp_path / "dino.pth"
    torch.save(ckpt, path)
    model = tinynets.tiny_backbone()
    report = load_checkpoint(model, path, key="teacher", strip_prefix=["backbone."])
    assert report.key == "teacher" and report.stripped == {"backbone.": len(trained)}
    torch.testing.assert_close(model.conv1.weight, trained["conv1.weight"])


def test_load_checkpoint_missing_parameter_is_refused(tmp_path, tinynets):
    trained = _trained_state(tinynets)
    del trained["bn1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(trained, path)
    model = tinynets.tiny_backbone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError) as info:
        load_checkpoint(model, path)
    assert info.value.message == "checkpoint partial.pth lacks 1 of the model's 7 parameters/buffers: bn1.weight"
    assert info.value.hint == "is the checkpoint for this exact architecture? check --model (and --checkpoint-key)"
    for k, v in model.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_load_checkpoint_without_batch_counter_loads(tmp_path, tinynets):
    trained = _trained_state(tinynets)
    del trained["bn1.num_batches_tracked"]  # checkpoints from torch < 0.4.1
    path = tmp_path / "old.pth"
    torch.save(trained, path)
    load_checkpoint(tinynets.tiny_backbone(), path)


def test_load_checkpoint_wrong_prefix_names_keys(tmp_path, tinynets):
    path = tmp_path / "other.pth"
    torch.save({"something_else.w": torch.zeros(1)}, path)
    # num_batches_tracked is not required, hence 6 of 7
    with pytest.raises(
        InputError, match="lacks 6 of the model's 7 parameters/buffers: conv1.weight, conv1.bias"
    ) as info:
        load_checkpoint(tinynets.tiny_backbone(), path)
    assert "'something_else.w'" in info.value.hint


def test_load_checkpoint_shape_mismatch(tmp_path, tinynets):
    trained = _trained_state(tinynets)
    trained["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "wide.pth"
    torch.save(trained, path)
    with pytest.raises(InputError, match=r"first 'conv1.weight': checkpoint \(8, 3, 3, 3\) vs model \(6, 3, 3, 3\)"):
        load_checkpoint(tinynets.tiny_backbone(), path)


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint", None])
def test_load_checkpoint_corrupt_file(tmp_path, tinynets, content):
    path = tmp_path / "bad.pth"
    if content is None:  # a real checkpoint cut short
        torch.save(_trained_state(tinynets), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=r"^cannot read checkpoint .*bad.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(tinynets.tiny_backbone(), path)


def test_load_checkpoint_missing_file(tmp_path, tinynets):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tinynets.tiny_backbone(), tmp_path / "nope.pth")


class _Opaque:  # a class the safe unpickler does not know
    pass


def test_untrusted_pickled_objects_need_trust(tmp_path, tinynets):
    path = tmp_path / "pickled.pth"
    monkey = types.ModuleType("nnk_test_opaque_mod")
    monkey._Opaque = _Opaque
    _Opaque.__module__ = "nnk_test_opaque_mod"
    _Opaque.__qualname__ = "_Opaque"
    sys.modules["nnk_test_opaque_mod"] = monkey
    try:
        torch.save({"state_dict": _trained_state(tinynets), "extra": _Opaque()}, path)
        with pytest.raises(InputError, match="holds pickled Python objects beyond tensors") as info:
            load_checkpoint(tinynets.tiny_backbone(), path)
        assert "--trust-checkpoint" in info.value.hint
        assert "nnk_test_opaque_mod._Opaque" in info.value.message
        load_checkpoint(tinynets.tiny_backbone(), path, trust=True)
    finally:
        del sys.modules["nnk_test_opaque_mod"]


# -- other readings: the architecture's converter, children by position -----------------------------
def test_a_sequential_of_the_children_loads_by_position(tinynets):
    model = tinynets.tiny_backbone()  # children: conv1, bn1, relu, avgpool, fc
    state = {f"backbone.{k}": v for k, v in nn.Sequential(*list(model.children())[:-1]).state_dict().items()}
    assert "backbone.1.running_var" in state
    fit = fit_state_dict({**state, "projection_head.0.weight": torch.zeros(2, 2)}, tinynets.tiny_backbone())
    assert fit.missing == [] and fit.mismatched == [] and fit.conversion.startswith("child positions")
    assert fit.stripped == {"backbone.": len(state)} and fit.unexpected == ["projection_head.0.weight"]
    assert torch.equal(fit.state["bn1.running_var"], model.bn1.running_var)


def test_the_converter_is_used_only_when_it_fits_better(tinynets):
    model = tinynets.tiny_backbone()
    renamed = {k.replace("conv1", "stem"): v for k, v in model.state_dict().items()}

    def convert(state, _model):
        return {k.replace("stem", "conv1"): v for k, v in state.items()}

    fit = fit_state_dict(renamed, model, converter=("stem renamer", convert))
    assert fit.missing == [] and fit.conversion == "stem renamer"
    exact = fit_state_dict(model.state_dict(), model, converter=("stem renamer", convert))
    assert exact.conversion is None

    def broken(state, _model):
        raise KeyError("visual.class_embedding")

    fit = fit_state_dict(renamed, model, converter=("broken", broken))
    assert fit.conversion is None and fit.missing == ["conv1.weight", "conv1.bias"]


def test_a_missing_key_error_names_what_is_left_over(tmp_path, tinynets):
    state = {("stem.weight" if k == "conv1.weight" else k): v for k, v in tinynets.tiny_backbone().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ck.pth")
    with pytest.raises(InputError) as err:
        load_checkpoint(tinynets.tiny_backbone(), tmp_path / "ck.pth")
    assert err.value.message.endswith("conv1.weight; left over in the checkpoint: stem.*")
