"""``nnk extract`` (arrays and dumps): output, exact errors, exit codes, nothing written on error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.storage.store import FeatureStore

DATA = Path(__file__).resolve().parents[1] / "data"


def _run(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def _save(path: Path, array) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


def test_import_npy_with_labels(runner, tmp_path):
    store = tmp_path / "s.h5"
    result = _run(
        runner,
        "extract",
        store,
        "--split",
        "train",
        "--from",
        DATA / "tiny_features.npy",
        "--labels",
        DATA / "tiny_labels.npy",
        "--meta",
        "run=exp42",
        "--meta",
        "epoch=300",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].strip() == f"Wrote split 'train' to {store}"
    header = next(line for line in lines if "split" in line and "dim" in line)
    assert header.split() == ["split", "n", "dim", "dtype", "classes", "unlabelled", "source"]
    assert lines[-2].split() == ["train", "12", "6", "float32", "3", "1", f"npy:{DATA / 'tiny_features.npy'}"]
    with FeatureStore(store) as fs:
        split = fs.split("train")
        assert fs.classes == ["0", "2", "5"]
        assert split.attrs["run"] == "exp42" and split.attrs["epoch"] == "300"
        assert split.attrs["labels_source"] == str(DATA / "tiny_labels.npy")


def test_json_and_csv_summaries(runner, tmp_path):
    store = tmp_path / "s.h5"
    result = _run(runner, "extract", store, "--split", "val", "--from", DATA / "tiny.npz", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1
    assert {k: doc[k] for k in ("split", "n", "dim", "dtype", "n_classes", "unlabelled", "new_classes")} == {
        "split": "val",
        "n": 6,
        "dim": 6,
        "dtype": "float32",
        "n_classes": 3,
        "unlabelled": 0,
        "new_classes": ["bird", "cat", "dog"],
    }
    assert result.stderr == ""  # json silences info lines
    result = _run(runner, "extract", store, "--split", "val2", "--from", DATA / "tiny.npz", "--format", "csv")
    assert result.stdout.splitlines() == [
        "split,n,dim,dtype,n_classes,unlabelled,source",
        f"val2,6,6,float32,3,0,npz:{DATA / 'tiny.npz'}",
    ]


def test_dino_and_vissl(runner, tmp_path):
    pytest.importorskip("torch")
    store = tmp_path / "s.h5"
    assert _run(runner, "extract", store, "--split", "train", "--from", DATA / "dino_dump").exit_code == 0
    assert _run(runner, "extract", store, "--split", "val", "--from", DATA / "dino_dump").exit_code == 0
    with FeatureStore(store) as fs:
        assert (fs.split("train").n, fs.split("val").n, fs.dim) == (12, 5, 6)
    vissl_store = tmp_path / "v.h5"
    result = _run(runner, "extract", vissl_store, "--split", "train", "--from", DATA / "vissl", "--layer", "heads")
    assert result.exit_code == 0, result.stderr
    with FeatureStore(vissl_store) as fs:
        assert fs.split("train").ids == [str(i) for i in range(10)]


def test_overwrite(runner, tmp_path):
    store = tmp_path / "s.h5"
    args = ["extract", store, "--split", "train", "--from", DATA / "tiny_features.npy"]
    assert _run(runner, *args).exit_code == 0
    before = store.read_bytes()
    result = _run(runner, *args)
    assert result.exit_code == 1
    assert _error_lines(result) == [
        f"Error: split 'train' already exists in {store}",
        "Hint: pass --overwrite to replace it",
    ]
    assert store.read_bytes() == before
    assert _run(runner, *args, "--overwrite").exit_code == 0


# -- bad input: exit 1, one Error line, nothing written -----------------------------------
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str]]:
    rng = np.random.default_rng(0)
    good = rng.normal(size=(6, 6)).astype(np.float32)  # d as in tiny_features.npy
    nan = good.copy()
    nan[2, 0], nan[4, 5] = np.nan, np.inf
    zero = good.copy()
    zero[[1, 5]] = 0
    (tmp_path / "garbage.npy").write_bytes(b"\x00garbage")
    return {
        "missing": ([tmp_path / "absent.npy"], f"Error: input not found: {tmp_path / 'absent.npy'}"),
        "unreadable": ([tmp_path / "garbage.npy"], f"Error: {tmp_path / 'garbage.npy'} is not a valid .npy file"),
        "missing labels": (
            [_save(tmp_path / "g.npy", good), "--labels", tmp_path / "nolabels.npy"],
            f"Error: labels file not found: {tmp_path / 'nolabels.npy'}",
        ),
        "nan": ([_save(tmp_path / "nan.npy", nan)], "Error: features contain NaN or Inf in 2 rows (first: row 2)"),
        "zero rows": (
            [_save(tmp_path / "zero.npy", zero)],
            "Error: features have 2 all-zero rows (first: row 1); cosine similarity is undefined for them",
        ),
        "1-D": (
            [_save(tmp_path / "one.npy", good[0])],
            "Error: features must be a 2-D array (n, d); got a 1-D array of shape (6,)",
        ),
        "3-D": (
            [_save(tmp_path / "three.npy", good.reshape(2, 3, 6))],
            "Error: features must be a 2-D array (n, d); got a 3-D array of shape (2, 3, 6)",
        ),
        "object": (
            [_save(tmp_path / "obj.npy", good.astype(object))],
            "Error: features have the unsupported dtype object; expected real numbers",
        ),
        "complex": (
            [_save(tmp_path / "cplx.npy", good.astype(np.complex64))],
            "Error: features have the complex dtype complex64; expected real numbers",
        ),
        "length": (
            [_save(tmp_path / "g2.npy", good), "--labels", _save(tmp_path / "l5.npy", np.arange(5))],
            "Error: features have 6 rows but labels have 5",
        ),
        "empty": (
            [_save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))],
            "Error: features are empty (shape (0, 6))",
        ),
        "npz key": (
            [DATA / "tiny.npz", "--features-key", "x"],
            f"Error: {DATA / 'tiny.npz'} has no array 'x' (it holds: features, labels, emb, y)",
        ),
        "layer": (
            [_save(tmp_path / "g3.npy", good), "--layer", "heads"],
            "Error: --layer applies to VISSL folders only",
        ),
        "vissl layer": (
            [DATA / "vissl"],
            f"Error: {DATA / 'vissl'} holds several layers for split 'train' (heads, res5)",
        ),
    }


CASES = [
    "missing",
    "unreadable",
    "missing labels",
    "nan",
    "zero rows",
    "1-D",
    "3-D",
    "object",
    "complex",
    "length",
    "empty",
    "npz key",
    "layer",
    "vissl layer",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_new_store(runner, tmp_path, case):
    args, error = _bad_inputs(tmp_path)[case]
    store = tmp_path / "s.h5"
    result = _run(runner, "extract", store, "--split", "train", "--from", *args)
    assert result.exit_code == 1
    assert _error_lines(result)[0] == error
    assert _error_lines(result)[1].startswith("Hint: ")
    assert "Traceback" not in result.stderr
    assert not store.exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_existing_store_is_untouched(runner, tmp_path, case):
    store = tmp_path / "s.h5"
    assert _run(runner, "extract", store, "--split", "base", "--from", DATA / "tiny_features.npy").exit_code == 0
    before = store.read_bytes()
    args, error = _bad_inputs(tmp_path)[case]
    result = _run(runner, "extract", store, "--split", "train", "--from", *args)
    assert result.exit_code == 1
    assert _error_lines(result)[0] == error
    assert store.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_dimension_mismatch(runner, tmp_path):
    store = tmp_path / "s.h5"
    assert _run(runner, "extract", store, "--split", "train", "--from", DATA / "tiny_features.npy").exit_code == 0
    before = store.read_bytes()
    other = _save(tmp_path / "d3.npy", np.ones((4, 3), np.float32))
    result = _run(runner, "extract", store, "--split", "val", "--from", other)
    assert result.exit_code == 1
    assert _error_lines(result) == [
        f"Error: features have dimension 3 but {store} holds dimension 6",
        "Hint: all splits of a store share one feature dimension; write to another store",
    ]
    assert store.read_bytes() == before


def test_dino_without_torch(runner, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    result = _run(runner, "extract", tmp_path / "s.h5", "--split", "train", "--from", DATA / "dino_dump")
    assert result.exit_code == 1
    assert _error_lines(result) == [
        "Error: reading DINO .pth dumps needs the optional 'torch' extra, which is not installed",
        'Hint: pip install "nnkcli[torch]"',
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(runner, tmp_path):
    path = _save(tmp_path / "locked.npy", np.ones((2, 2)))
    path.chmod(0)
    result = _run(runner, "extract", tmp_path / "s.h5", "--split", "t", "--from", path)
    assert result.exit_code == 1
    assert _error_lines(result)[0] == f"Error: cannot read {path}: permission denied"


# -- usage errors: exit 2 -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "x.npy", "--images", "imgs"], "--from cannot be combined with --images/--image-list"),
        (["--from", "x.npy", "--image-list", "l.csv"], "--from cannot be combined with --images/--image-list"),
        ([], "give --from PATH (arrays or dumps) or --images DIR / --image-list FILE"),
        (["--from", "x.npy", "--model", "torchvision:resnet50"], "--model applies to --images/--image-list only"),
        (["--from", "x.npy", "--batch-size", "8"], "--batch-size applies to --images/--image-list only"),
        (["--images", "imgs", "--labels", "l.npy"], "--labels applies to --from only"),
        (["--from", "x.npy", "--features", "cls"], "--features applies to --images/--image-list only"),
        (["--from", "x.npy", "--protocol", "dino"], "--protocol applies to --images/--image-list only"),
        (
            ["--from", "x.npy", "--meta", "novalue"],
            "Invalid value for '--meta': expected KEY=VALUE with a plain-word key, got 'novalue'",
        ),
        (["--from", "x.npy", "--meta", "a=1", "--meta", "a=2"], "Invalid value for '--meta': key 'a' given twice"),
    ],
)
def test_usage_errors(runner, tmp_path, extra, message):
    result = _run(runner, "extract", tmp_path / "s.h5", "--split", "train", *extra)
    assert result.exit_code == 2
    assert f"Error: {message}" in result.stderr.splitlines()
    assert not (tmp_path / "s.h5").exists()


def test_missing_split_option(runner, tmp_path):
    result = _run(runner, "extract", tmp_path / "s.h5", "--from", "x.npy")
    assert result.exit_code == 2
    assert "Error: Missing option '--split'." in result.stderr.splitlines()


@pytest.mark.parametrize(
    ("extra", "code", "error"),
    [
        (
            ["--split", "a/b"],
            2,
            "Error: Invalid value for '--split': invalid split name (got 'a/b'); use letters, "
            "digits, '_', '-' or '.', e.g. train or val",
        ),
        (
            ["--split", "t", "--meta", "source_format=x"],
            1,
            "Error: --meta key 'source_format' is already set by the importer",
        ),
        (
            ["--split", "t", "--meta", "source=x"],
            2,
            "Error: Invalid value for '--meta': key 'source' is reserved: nnkcli sets it",
        ),
        (
            ["--split", "t", "--meta", "created_at=x"],
            2,
            "Error: Invalid value for '--meta': key 'created_at' is reserved: nnkcli sets it",
        ),
    ],
)
def test_bad_split_name_and_meta_keys(runner, tmp_path, extra, code, error):
    # bad option values are usage errors (2); a key the importer sets depends on the input (1)
    result = _run(runner, "extract", tmp_path / "s.h5", "--from", DATA / "tiny_features.npy", *extra)
    assert result.exit_code == code
    assert error in _error_lines(result)
    assert not (tmp_path / "s.h5").exists()


def test_images_path_is_handed_to_the_model_extractor(runner, tmp_path, monkeypatch):
    calls = {}

    def fake(ctx, *, store, split, overwrite, meta, **options):
        calls.update(store=store, split=split, overwrite=overwrite, meta=meta, options=options)
        return {
            "store": store,
            "split": split,
            "n": 3,
            "dim": 8,
            "dtype": "float32",
            "n_classes": 2,
            "unlabelled": 0,
            "source": "torchvision:resnet18",
        }

    monkeypatch.setattr("nnkcli.commands.extract.run_image_extraction", fake)
    result = _run(
        runner,
        "extract",
        tmp_path / "s.h5",
        "--split",
        "val",
        "--images",
        tmp_path,
        "--model",
        "torchvision:resnet18",
        "--meta",
        "k=v",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.stderr
    assert calls["meta"] == {"k": "v"} and calls["split"] == "val" and calls["overwrite"] is False
    assert calls["options"]["model"] == "torchvision:resnet18" and "fmt" not in calls["options"]
    assert result.stdout.splitlines()[1] == "val,3,8,float32,2,0,torchvision:resnet18"


def test_help_has_examples(runner):
    result = _run(runner, "extract", "--help")
    assert result.exit_code == 0
    assert "nnk extract feats.h5 --split train --from train_feats.npy --labels train_labels.npy" in result.stdout
    for option in (
        "--from",
        "--labels",
        "--features-key",
        "--labels-key",
        "--layer",
        "--overwrite",
        "--meta",
        "--images",
        "--format",
    ):
        assert option in result.stdout
