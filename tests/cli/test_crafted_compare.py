"""``nnk compare`` on crafted prediction files: each one a clean exit-1 ``Error:`` line, quickly and in
bounded memory, the inputs byte-identical and nothing created beside them.

The files are real ``classify --out`` files altered here with h5py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import nnk_data
from nnk_cli import invoke
from nnk_crafted import error_lines, run_bounded, state

DAMAGED = "Hint: the file is damaged or was not written by nnkcli; write it again"
BIG = 2**40


@pytest.fixture(scope="module")
def made_files(tmp_path_factory):
    """Two prediction files of one 80-query split, k 5 and k 9, both methods."""
    from click.testing import CliRunner

    from nnkcli.cli import cli

    folder = tmp_path_factory.mktemp("pred")
    store = nnk_data.make_store(folder / "s.h5", n_query=80, ids="q{:03d}")
    for name, k in (("a.h5", 5), ("b.h5", 9)):
        res = CliRunner().invoke(cli, ["classify", str(store), "--k", str(k), "--out", str(folder / name), "-q"])
        assert res.exit_code == 0, res.output
    return folder


@pytest.fixture
def files(made_files, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("a.h5", "b.h5"):
        shutil.copyfile(made_files / name, run / name)
    return run / "a.h5", run / "b.h5"


def refused(runner, a, b, error: str, hint: str | None = DAMAGED) -> None:
    folder = Path(a).parent
    before = state(folder)
    res = invoke(runner, "compare", a, b)
    assert res.exit_code == 1, res.stdout + res.stderr
    assert error_lines(res.stderr) == [error] + ([hint] if hint else [])
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr
    assert state(folder) == before


def _replace(path, name, data=None, **create):
    with h5py.File(path, "a") as f:
        del f[name]
        if data is not None:
            f.create_dataset(name, data=data)
        else:
            f.create_dataset(name, **create)


def _read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


def test_the_files_as_written_compare(runner, files):
    assert invoke(runner, "compare", *files).exit_code == 0


def test_top5_shorter_than_the_labels(runner, files):
    a, b = files
    _replace(b, "nnk/top5", _read(b, "nnk/top5")[:79])
    refused(
        runner,
        a,
        b,
        f"Error: {b} is not a valid predictions file: dataset 'nnk/top5' has shape (79, 5), expected (80, 5)",
    )


def test_top5_with_0_columns(runner, files):
    a, b = files
    _replace(b, "knn/top5", np.zeros((80, 0), np.int64))
    refused(
        runner,
        a,
        b,
        f"Error: {b} is not a valid predictions file: dataset 'knn/top5' has shape (80, 0), expected (80, 5)",
    )


def test_top5_holding_strings(runner, files):
    a, b = files
    _replace(a, "nnk/top5", np.full((80, 5), b"cat"))
    refused(
        runner,
        a,
        b,
        f"Error: {a} is not a valid predictions file: dataset 'nnk/top5' holds |S3 values, expected integers",
    )


def test_top5_of_float64_with_a_nan(runner, files):
    """Was accepted, with a numpy RuntimeWarning on stderr."""
    a, b = files
    top = _read(b, "nnk/top5").astype(np.float64)
    top[3, 0] = np.nan
    _replace(b, "nnk/top5", top)
    refused(
        runner,
        a,
        b,
        f"Error: {b} is not a valid predictions file: dataset 'nnk/top5' holds float64 values, expected integers",
    )


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("k", "abc", "attribute 'k' is 'abc', expected an integer >= 1"),
        ("k", 0, "attribute 'k' is 0, expected an integer >= 1"),
        ("methods", '["svm"]', "attribute 'methods' is ['svm'], expected a list of 'nnk' and 'knn' (or 'linear')"),
        ("class_names", "cats", "attribute 'class_names' is 'cats', expected a list of strings"),
    ],
)
def test_attributes_of_the_wrong_type(runner, files, key, value, what):
    a, b = files
    with h5py.File(a, "a") as f:
        f.attrs[key] = value
    refused(runner, a, b, f"Error: {a} is not a valid predictions file: {what}")


def test_2d_labels(runner, files):
    a, b = files
    labels = _read(a, "labels")
    _replace(a, "labels", np.stack([labels, labels], axis=1))
    refused(
        runner, a, b, f"Error: {a} is not a valid predictions file: dataset 'labels' has shape (80, 2), expected (*,)"
    )


def test_ids_that_are_not_byte_strings(runner, files):
    a, b = files
    _replace(a, "ids", np.arange(80))
    refused(
        runner,
        a,
        b,
        f"Error: {a} is not a valid predictions file: dataset 'ids' holds int64 values, expected byte strings",
    )


def test_labels_outside_the_classes(runner, files):
    a, b = files
    for path in files:
        with h5py.File(path, "a") as f:
            f["labels"][10] = -7
    refused(runner, a, b, f"Error: {a} has labels outside its 4 classes", None)


def test_two_files_declaring_2_to_the_40_queries_with_no_data(files):
    """It hung (a 2**40-row scan for the class count, then the comparison)."""
    a, b = files
    for path in files:
        with h5py.File(path, "a") as f:
            del f.attrs["class_names"]
            for name in ("labels", "nnk/top5", "knn/top5", "ids"):
                shape, dtype = (BIG, *f[name].shape[1:]), f[name].dtype
                del f[name]
                f.create_dataset(name, shape=shape, dtype=dtype, chunks=(4096, *shape[1:]))
    before = state(a.parent)
    done = run_bounded("compare", a, b, timeout=30)
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [
        f"Error: {a} is not a valid predictions file: dataset 'labels' declares {BIG} rows "
        "but holds the data of at most 0",
        DAMAGED,
    ]
    assert "Traceback" not in done.stderr
    assert state(a.parent) == before


def test_a_truncated_b(runner, files):
    """Was "compare two prediction files or two stores, not one of each"."""
    a, b = files
    data = b.read_bytes()
    b.write_bytes(data[:4000])
    with pytest.raises(OSError, match=r"truncated file: eof = 4000, .*stored_eof = (\d+)") as info:
        h5py.File(b, "r")
    stored = re.search(r"stored_eof = (\d+)", str(info.value)).group(1)
    refused(
        runner,
        a,
        b,
        f"Error: cannot read {b}: the file is truncated (4000 bytes, HDF5 expects at least {stored})",
        "Hint: copy or write it again",
    )
    refused(
        runner,
        b,
        a,
        f"Error: cannot read {b}: the file is truncated (4000 bytes, HDF5 expects at least {stored})",
        "Hint: copy or write it again",
    )
