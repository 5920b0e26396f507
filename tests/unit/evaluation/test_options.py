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
from nnkcli.errors import ExitCode, OptionError
from nnkcli.evaluation.options import DataOptions, ScoringOptions, format_k_spec, parse_k_spec, resolve


def test_normalized_on_construction():
    o = ScoringOptions(methods="both", k_values="10..30", temperature=1)
    assert o.methods == ("nnk", "knn") and o.k_values == (10, 20, 30)
    assert isinstance(o.temperature, float)
    assert ScoringOptions(methods=["knn", "nnk", "knn"]).methods == ("knn", "nnk")
    assert ScoringOptions(k_values=[30, np.int64(5), 5]).k_values == (5, 30)
    assert ScoringOptions(k_values=range(10, 31, 10)).k_values == (10, 20, 30)
    assert ScoringOptions(k_values=7).k_values == (7,)


@pytest.mark.parametrize("field, value, option", [
    ("methods", "svm", "--method"),
    ("methods", (), "--method"),
    ("k_values", 0, "--k"),
    ("k_values", [], "--k"),
    ("k_values", [1.5], "--k"),
    ("k_values", [True], "--k"),
    ("kernel", "rbf", "--kernel"),
    ("temperature", 0.0, "--temperature"),
    ("temperature", float("nan"), "--temperature"),
    ("weighting", "inverse", "--weighting"),
    ("exclude_self", "yes", "--exclude-self"),
    ("chunk_size", 0, "--chunk-size"),
    ("threads", 2.0, "--threads"),
    ("tol", -1e-8, "tol"),
])
def test_every_bad_value_is_an_option_error_naming_the_option(field, value, option):
    with pytest.raises(OptionError) as err:
        ScoringOptions(**{field: value})
    assert err.value.option == option and err.value.exit_code == ExitCode.USAGE
    assert err.value.message.startswith(f"{option}: ")


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
    with pytest.raises(OptionError, match="--query-split"):
        DataOptions(query_split="a/b")


@given(st.lists(st.integers(1, 500), min_size=1, max_size=30, unique=True))
def test_format_k_spec_round_trips(ks):
    ks = sorted(ks)
    assert parse_k_spec(format_k_spec(ks)) == ks


def test_docstring_examples():
    failures, _ = doctest.testmod(options_module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
