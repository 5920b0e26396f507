"""nnkcli.evaluation.options: normalization, validation, recording, the k SPEC round trip."""

from __future__ import annotations

import dataclasses
import doctest
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnkcli.evaluation.options as options_module
from nnkcli.errors import ExitCode, OptionConflict, OptionError, SettingName
from nnkcli.evaluation.kspec import format_k_spec, parse_k_spec
from nnkcli.evaluation.options import (
    DataOptions,
    ScoringOptions,
    check_shard_output,
    resolve,
    resolve_one_k,
)
from nnkcli.numerics.metrics import check_gate_method, check_gates


def test_normalized_on_construction():
    o = ScoringOptions(methods="both", k_values="10..30", temperature=1)
    assert o.methods == ("nnk", "knn") and o.k_values == (10, 20, 30)
    assert isinstance(o.temperature, float)
    assert ScoringOptions(methods=["knn", "nnk", "knn"]).methods == ("knn", "nnk")
    assert ScoringOptions(k_values=[30, np.int64(5), 5]).k_values == (5, 30)
    assert ScoringOptions(k_values=range(10, 31, 10)).k_values == (10, 20, 30)
    assert ScoringOptions(k_values=7).k_values == (7,)


@pytest.mark.parametrize(
    "field, value, python, option",
    [
        ("methods", "svm", "methods", "--method"),
        ("methods", (), "methods", "--method"),
        ("k_values", 0, "k", "--k"),
        ("k_values", [], "k", "--k"),
        ("k_values", [1.5], "k", "--k"),
        ("k_values", [True], "k", "--k"),
        ("kernel", "rbf", "kernel", "--kernel"),
        ("temperature", 0.0, "temperature", "--temperature"),
        ("temperature", float("nan"), "temperature", "--temperature"),
        ("weighting", "inverse", "weighting", "--weighting"),
        ("exclude_self", "yes", "exclude_self", "--exclude-self"),
        ("chunk_size", 0, "chunk_size", "--chunk-size"),
        ("threads", 2.0, "threads", "--threads"),
        ("device", "tpu", "device", "--device"),
        ("tol", -1e-8, "tol", "tol"),
    ],
)
def test_every_bad_value_is_an_option_error_naming_the_parameter(field, value, python, option):
    # a Python call names the Python parameter; the command line names the option (same error, same reason)
    with pytest.raises(OptionError) as err:
        ScoringOptions(**{field: value})
    assert isinstance(err.value, ValueError)
    assert (err.value.name, err.value.option, err.value.exit_code) == (python, option, ExitCode.USAGE)
    assert str(err.value) == err.value.message and err.value.message.startswith(f"{python}: ")
    assert err.value.cli_message() == f"{option}: {err.value.message[len(python) + 2 :]}"
    if option.startswith("--"):
        assert option not in str(err.value)


def test_k_error_names_k():
    with pytest.raises(ValueError) as err:
        ScoringOptions(k_values=0)
    assert str(err.value) == "k: k must be >= 1 (got 0)"
    with pytest.raises(OptionError, match=r"^methods: unknown method; choose one of nnk, knn, both \(got 'svm'\)$"):
        ScoringOptions(methods="svm")


def test_k_is_the_python_name_of_k_values():
    for k, want in ((10, (10,)), ([20, 10], (10, 20)), ("10..30", (10, 20, 30))):
        o, _ = resolve(None, None, {"k": k})
        assert o.k_values == want
    o, _ = resolve(None, None, {"k": [10, 20]})
    assert o.k_values == (10, 20) and o.as_dict()["k_values"] == [10, 20]  # recorded under the field's name
    assert ScoringOptions().replace(k=7).k_values == (7,)
    with pytest.raises(TypeError, match="given twice"):
        resolve(None, None, {"k": 5, "k_values": 6})
    with pytest.raises(OptionError, match=r"^k: "):
        resolve(None, None, {"k": 0})


def test_one_k_is_one_rule():
    with pytest.raises(OptionError) as err:
        resolve_one_k(None, None, {"k": [5, 10]}, command="classify")
    assert str(err.value) == "k: classify evaluates one k (got [5, 10])"
    assert err.value.cli_message() == "--k: classify evaluates one k (got [5, 10])"
    with pytest.raises(OptionError, match="compare takes one default k"):
        resolve_one_k(ScoringOptions(k_values=[5, 10]), None, {}, command="compare")
    assert resolve_one_k(None, None, {}, command="classify")[0].k_values == (50,)


def test_shard_needs_an_output_names_both_sides():
    check_shard_output(None, None, output_name="predictions_path")
    check_shard_output((0, 2), "p.h5", output_name="predictions_path")
    with pytest.raises(OptionConflict) as err:
        check_shard_output((0, 2), None, output_name="partial_path")
    assert isinstance(err.value, ValueError) and err.value.exit_code == ExitCode.USAGE
    assert str(err.value) == "shard needs partial_path: a shard's results are only useful merged"
    assert err.value.cli_message() == "--shard needs --out: a shard's results are only useful merged"


def test_gate_method_among_the_methods_run():
    check_gate_method("all", ("knn",))
    check_gate_method(None, ("knn",))
    check_gate_method("knn", ("nnk", "knn"))
    with pytest.raises(OptionConflict) as err:
        check_gate_method("nnk", ("knn",))
    assert str(err.value) == "gate_method nnk is not among the methods run (methods knn)"
    assert err.value.cli_message() == "--gate-method nnk is not among the methods run (--method knn)"
    with pytest.raises(OptionConflict):  # the gates themselves ask the same rule
        check_gates([{"method": "knn", "k": 5, "top1": 90.0}], min_top1=50, gate_method="nnk")


def test_settings_declarations():
    d = ScoringOptions.declared("k_values")
    assert (d.python, d.option, d.default) == ("k", "--k", (50,))
    assert ScoringOptions.declared("tol").option is None
    assert ScoringOptions.option_names()["methods"] == "--method" and "tol" not in ScoringOptions.option_names()
    assert DataOptions.declared("shard").names == SettingName("shard", "--shard")
    assert ScoringOptions.check_field("temperature", "0.5") == 0.5


def test_frozen_replace_and_whole_record():
    o = ScoringOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.kernel = "gaussian"
    p = o.replace(kernel="gaussian", k_values="5")
    assert (p.kernel, p.k_values, o.kernel) == ("gaussian", (5,), "cosine")
    with pytest.raises(OptionError):
        o.replace(kernel="rbf")
    with pytest.raises(TypeError, match="no setting colour"):
        o.replace(colour="red")
    d = o.as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(ScoringOptions)}  # every field, none forgotten
    assert ScoringOptions(**d) == o  # the record rebuilds the options
    assert json.loads(json.dumps(d)) == d


def test_resolve_is_the_one_keyword_path():
    base = ScoringOptions(methods="knn")
    o, d = resolve(base, None, {"temperature": 0.2, "query_split": "test"})
    assert (o.methods, o.temperature, d.query_split, d.train_split) == (("knn",), 0.2, "test", "train")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        resolve(None, None, {"temprature": 0.2})
    with pytest.raises(OptionError, match="^query_split: invalid split name"):
        DataOptions(query_split="a/b")


@given(st.lists(st.integers(1, 500), min_size=1, max_size=30, unique=True))
def test_format_k_spec_round_trips(ks):
    ks = sorted(ks)
    assert parse_k_spec(format_k_spec(ks)) == ks


def test_docstring_examples():
    failures, _ = doctest.testmod(options_module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_k_is_the_keyword_of_classify_and_sweep(tmp_path):
    from nnkcli import classify, sweep
    from nnkcli.storage.store import write_split

    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8)) * 3
    path = tmp_path / "s.h5"
    for split, n in (("train", 90), ("val", 30)):
        y = rng.integers(0, 3, n)
        write_split(path, split, (means[y] + rng.normal(size=(n, 8))).astype(np.float32), y, source="test")
    doc = sweep(path, k=[10, 20], methods="knn").to_dict()
    assert doc["parameters"]["k_values"] == [10, 20] and sorted({r["k"] for r in doc["results"]}) == [10, 20]
    assert sweep(path, k="5..10:5", methods="knn").to_dict()["parameters"]["k_values"] == [5, 10]
    assert classify(path, k=10, methods="knn")["parameters"]["k_values"] == [10]
    for call in (lambda: sweep(path, k=0), lambda: classify(path, k=0), lambda: sweep(path, k=[10, 0])):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value).startswith("k: k must be >= 1") and "--k" not in str(err.value)
