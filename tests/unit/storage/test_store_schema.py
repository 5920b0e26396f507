"""A crafted or damaged store is refused on open, naming the file and what is wrong (never a crash,
a TiB allocation or an ``unexpected`` error)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.errors import StoreError
from nnkcli.storage.store import FeatureStore

RNG = np.random.default_rng(0)


def _base(path, classes=True):
    f = h5py.File(path, "w")
    f.attrs["nnk_format"] = "features"
    f.attrs["format_version"] = 1
    if classes:
        f.create_dataset("classes", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype())
    return f


def _good(f, name, n=40, d=8):
    g = f.create_group(name)
    g.create_dataset("features", data=RNG.normal(size=(n, d)).astype("f4"))
    g.create_dataset("labels", data=RNG.integers(0, 2, n))
    return g


def _val(f, features, labels=None):
    g = f.create_group("val")
    if isinstance(features, tuple):
        g.create_dataset("features", shape=features, dtype="f4", chunks=(1024, features[1]))
    else:
        g.create_dataset("features", data=features)
    if labels is not None:
        g.create_dataset("labels", data=labels)
    return g


def _craft(kind, path):
    with _base(path, classes=kind != "numeric_classes") as f:
        _good(f, "train")
        if kind == "one_d":
            _val(f, np.ones(40, "f4"))
        elif kind == "short_labels":
            _val(f, RNG.normal(size=(40, 8)).astype("f4"), np.zeros(10, "i8"))
        elif kind == "huge_label":
            _val(f, RNG.normal(size=(40, 8)).astype("f4"), np.full(40, 10**12, "i8"))
        elif kind == "negative_label":
            _val(f, RNG.normal(size=(40, 8)).astype("f4"), np.full(40, -7, "i8"))
        elif kind == "huge_dataset":
            _val(f, (2**40, 8))  # declared, never written: a few KiB on disk
        elif kind == "numeric_classes":
            f.create_dataset("classes", data=np.arange(2))
            _good(f, "val")
        elif kind == "string_features":
            _val(f, np.array([["x"] * 8] * 40, dtype=object).astype(h5py.string_dtype()))
        elif kind == "long_name":
            _good(f, "v" * 300)
        elif kind == "features_group":
            f.create_group("val").create_group("features")
        elif kind == "float_labels":
            _val(f, RNG.normal(size=(40, 8)).astype("f4"), np.full(40, 1.5))


CASES = {
    "one_d": "split 'val' has features of shape (40,); expected a 2-D (n, d) array",
    "short_labels": "split 'val' has labels of shape (10,) for 40 feature rows; expected (40,)",
    "huge_label": "split 'val' has label 1000000000000 at row 0, outside the 2 classes of /classes (40 such rows)",
    "negative_label": "split 'val' has label -7 at row 0, outside the 2 classes of /classes",
    "huge_dataset": "split 'val' declares 1099511627776 rows",
    "numeric_classes": "/classes is int64 of shape (2,); expected a 1-D list of class names (strings)",
    "string_features": "split 'val' has features of dtype object; expected floating-point numbers",
    "long_name": "holds a split with an invalid name 'vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv...' (300 characters)",
    "features_group": "split 'val' has no features dataset",
    "float_labels": "split 'val' has labels of dtype float64; expected integer class ids",
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_crafted_store_is_refused_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.h5"
    _craft(kind, path)
    with pytest.raises(StoreError) as info:
        with FeatureStore(path) as store:
            for split in store:
                split.labels  # labels are range-checked when read
    assert str(path) in info.value.message
    assert CASES[kind] in info.value.message


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("command", ["info", "classify"])
def test_crafted_store_is_a_clean_exit_1_in_the_cli(runner, tmp_path, kind, command):
    path = tmp_path / f"{kind}.h5"
    _craft(kind, path)
    result = runner.invoke(cli, [command, str(path)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors and "unexpected" not in errors[0] and str(path) in errors[0], result.stderr


def test_a_store_written_by_nnkcli_passes(tmp_path):
    from nnkcli.storage.store import write_split

    path = tmp_path / "ok.h5"
    write_split(path, "train", RNG.normal(size=(30, 4)), np.arange(30) % 3, source="t", ids=[str(i) for i in range(30)])
    with FeatureStore(path) as store:
        assert store.split("train").labels.max() == 2
