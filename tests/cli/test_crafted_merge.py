"""``nnk merge`` on crafted partial result files: each one a clean exit-1 ``Error:`` line, in bounded
memory and time, the inputs byte-identical and nothing created beside them.

The files are real parts (``sweep --shard I/2 --out``) altered here with h5py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import nnk_data
from nnk_cli import invoke
from nnk_crafted import error_lines, run_bounded, state

DAMAGED = "Hint: the file is damaged or was not written by this nnkcli; rerun that shard"
BIG = 2**40


@pytest.fixture(scope="module")
def made_parts(tmp_path_factory):
    """Two parts of one sweep over 60 queries (30 each), k 3 and 5, both methods."""
    from click.testing import CliRunner

    from nnkcli.cli import cli

    folder = tmp_path_factory.mktemp("parts")
    store = nnk_data.make_store(folder / "s.h5")
    for i in (0, 1):
        args = ["sweep", str(store), "--k", "3,5", "--shard", f"{i}/2", "--out", str(folder / f"p{i}.h5"), "-q"]
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return folder


@pytest.fixture
def parts(made_parts, tmp_path):
    """Fresh copies of the two parts in ``tmp_path / "run"``."""
    run = tmp_path / "run"
    run.mkdir()
    for i in (0, 1):
        shutil.copyfile(made_parts / f"p{i}.h5", run / f"p{i}.h5")
    return run / "p0.h5", run / "p1.h5"


def refused(runner, paths, error: str, hint: str = DAMAGED) -> None:
    """``nnk merge PATHS --out ALL.h5`` exits 1 with exactly ``error`` and ``hint``; nothing changes."""
    folder = Path(paths[0]).parent
    before = state(folder)
    res = invoke(runner, "merge", *paths, "--out", folder / "all.h5")
    assert res.exit_code == 1, res.stdout + res.stderr
    assert error_lines(res.stderr) == [error, hint]
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr
    assert state(folder) == before  # byte-identical inputs, no output, no temp or lock file


def refused_in_a_subprocess(paths, error: str, hint: str = DAMAGED) -> None:
    """The same in a subprocess with 1.5 GiB of address space and a 60 s limit."""
    folder = Path(paths[0]).parent
    before = state(folder)
    done = run_bounded("merge", *paths, "--out", folder / "all.h5")
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [error, hint]
    assert "Traceback" not in done.stderr
    assert state(folder) == before


def _edit_attrs(path, **changes):
    with h5py.File(path, "a") as f:
        for key, value in changes.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value


def _compat(path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["compatibility"])


def _replace_dataset(path, name, data=None, *, shape=None, dtype=None, chunks=None):
    with h5py.File(path, "a") as f:
        del f[name]
        if data is not None:
            f.create_dataset(name, data=data)
        else:
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)


def test_the_parts_as_written_merge(runner, parts):
    res = invoke(runner, "merge", *parts, "--format", "json")
    assert res.exit_code == 0, res.stderr


def test_a_top5_dataset_shorter_than_its_labels(runner, parts):
    with h5py.File(parts[1], "r") as f:
        top = f["nnk/k5/top5"][:29]
    _replace_dataset(parts[1], "nnk/k5/top5", top)
    refused(
        runner,
        parts,
        f"Error: {parts[1]} is not a valid partial result file: dataset 'nnk/k5/top5' has shape (29, 5), "
        "expected (30, 5)",
    )


def test_the_compatibility_attribute_removed_or_not_json(runner, parts):
    _edit_attrs(parts[1], compatibility=None)
    refused(
        runner, parts, f"Error: {parts[1]} is not a valid partial result file: attribute 'compatibility' is missing"
    )
    _edit_attrs(parts[1], compatibility="{not json")
    refused(
        runner,
        parts,
        f"Error: {parts[1]} is not a valid partial result file: attribute 'compatibility' is '{{not json', "
        "expected an object",
    )


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("shard", "abc", "attribute 'shard' is 'abc', expected an integer"),
        ("shard", 5, "shard 5 of 2: need 0 <= shard < n_shards"),
        ("row_stop", -1, "rows 0:-1: need 0 <= row_start <= row_stop"),
        ("format_version", "1", "attribute 'format_version' is '1', expected an integer"),
        ("class_names", '["a"]', "class_names are not 4 strings (document.n_classes)"),
        ("command", "evaluate", "attribute 'command' is 'evaluate', expected 'classify' or 'sweep'"),
        ("alpha", 7.0, "attribute 'alpha' is 7.0, expected in (0, 1)"),
    ],
)
def test_every_attribute_is_checked_before_it_is_used(runner, parts, key, value, what):
    _edit_attrs(parts[0], **{key: value})
    refused(runner, parts, f"Error: {parts[0]} is not a valid partial result file: {what}")


def test_parameters_that_are_no_valid_options(runner, parts):
    compat = _compat(parts[0])
    compat["parameters"]["methods"] = ["svm"]
    _edit_attrs(parts[0], compatibility=json.dumps(compat))
    res = invoke(runner, "merge", *parts)
    assert res.exit_code == 1
    line = error_lines(res.stderr)[0]
    assert line.startswith(
        f"Error: {parts[0]} is not a valid partial result file: compatibility.parameters are not valid"
    )
    assert "svm" in line and "Traceback" not in res.stderr


def test_predicted_classes_and_labels_outside_the_classes(runner, parts):
    with h5py.File(parts[1], "a") as f:
        f["knn/k3/top5"][7, 2] = 4  # 4 classes: 0..3
    refused(
        runner,
        parts,
        f"Error: {parts[1]} is not a valid partial result file: dataset 'knn/k3/top5' holds "
        f"{_row(parts[1], 'knn/k3/top5', 7)} at row 7, outside -1..3",
    )


def _row(path, name, i):
    with h5py.File(path, "r") as f:
        return f[name][i].tolist()


def test_a_dataset_of_strings_or_floats(runner, parts):
    _replace_dataset(parts[0], "labels", np.array([b"x"] * 30))
    refused(
        runner,
        parts,
        f"Error: {parts[0]} is not a valid partial result file: dataset 'labels' holds |S1 values, expected integers",
    )


def test_a_part_claiming_10_to_the_12_shards(parts):
    """It made a list of every missing shard: 24 GB until the kernel killed it."""
    n = 10**12
    compat = _compat(parts[0])
    compat["n_shards"] = n
    _edit_attrs(parts[0], n_shards=n, compatibility=json.dumps(compat))
    refused_in_a_subprocess(
        [parts[0]],
        f"Error: {n - 1} of {n} shards are missing: 1/{n} (queries 1:2), 2/{n} (queries 2:3), "
        f"3/{n} (queries 3:4), 4/{n} (queries 4:5), 5/{n} (queries 5:6) ...",
        "Hint: run the missing shards (same command with --shard I/N) and merge again",
    )


def test_labels_declared_with_2_to_the_40_rows_and_no_data(parts):
    """Each part was read whole: a MemoryError. Now the declared rows are checked against the data."""
    compat = _compat(parts[0])
    compat["n_shards"], compat["query"]["n"] = 1, BIG
    _edit_attrs(parts[0], n_shards=1, row_stop=BIG, compatibility=json.dumps(compat))
    _replace_dataset(parts[0], "labels", shape=(BIG,), dtype=np.int64, chunks=(65536,))
    refused_in_a_subprocess(
        [parts[0]],
        f"Error: {parts[0]} is not a valid partial result file: dataset 'labels' declares {BIG} rows "
        "but holds the data of at most 0",
    )


def test_labels_of_2_to_the_40_rows_in_a_part_of_30(parts):
    _replace_dataset(parts[1], "labels", shape=(BIG,), dtype=np.int64, chunks=(65536,))
    refused_in_a_subprocess(
        parts,
        f"Error: {parts[1]} is not a valid partial result file: dataset 'labels' has shape ({BIG},), expected (30,)",
    )
