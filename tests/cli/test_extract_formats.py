"""``nnk extract --from`` for lightly CSV, safetensors, parquet, embedding-reader folders, string
labels and --class-names: each good file round-trips, each bad variant gets one clean error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.storage.store import FeatureStore

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
st = pytest.importorskip("safetensors.numpy")


def _run(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _data(n=23, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 3, size=n)


def _stored(store, split="train"):
    with FeatureStore(store) as fs:
        sp = fs.split(split)
        return sp.read(), np.asarray(sp.labels), fs.classes, sp.ids if hasattr(sp, "ids") else None


def _check_roundtrip(runner, tmp_path, source, X, y, *extra):
    store = tmp_path / "s.h5"
    result = _run(runner, "extract", store, "--split", "train", "--from", source, *extra)
    assert result.exit_code == 0, result.stderr
    feats, labels, classes, _ = _stored(store)
    np.testing.assert_array_equal(feats, X)
    assert [classes[i] for i in labels] == [str(v) for v in y]
    assert not store.with_suffix(".h5.tmp").exists()
    return store


def _refused(runner, tmp_path, source, *extra) -> str:
    store = tmp_path / "refused.h5"
    result = _run(runner, "extract", store, "--split", "train", "--from", source, *extra)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert not store.exists()  # nothing written
    return _error(result)


# --- lightly embeddings.csv --------------------------------------------------------------


def _write_lightly(path: Path, X, y, *, header=None, names=None):
    d = X.shape[1]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header or ["filenames", *[f"embedding_{j}" for j in range(d)], "labels"])
        for i, (row, label) in enumerate(zip(X, y)):
            w.writerow(
                [(names or [f"img_{k}.jpg" for k in range(len(X))])[i], *[repr(float(v)) for v in row], int(label)]
            )
    return path


def test_lightly_csv_good_file(runner, tmp_path, monkeypatch):
    from nnkcli.extract import tabular

    monkeypatch.setattr(tabular, "_CSV_STRIDE", 4)  # several offsets, blocks starting mid-stride
    X, y = _data()
    names = [f"dir/img, {k}.jpg" for k in range(len(X))]  # a quoted comma in a filename
    path = _write_lightly(tmp_path / "embeddings.csv", X, y, names=names)
    imported = tabular.load_lightly_csv(path)
    np.testing.assert_array_equal(imported.features[5:18], X[5:18].astype(np.float64))
    assert imported.ids == names
    store = _check_roundtrip(runner, tmp_path, path, X, y)
    with FeatureStore(store) as fs:
        assert list(fs.split("train").ids) == names


def test_lightly_csv_bad_files(runner, tmp_path):
    X, y = _data()
    wrong = _write_lightly(tmp_path / "wrong.csv", X, y)
    lines = wrong.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 2)[0] + "," + lines[4].rsplit(",", 1)[1]  # one embedding value dropped
    wrong.write_text("\n".join(lines) + "\n")
    assert _refused(runner, tmp_path, wrong) == f"Error: {wrong} line 5 has 6 fields, the header has 7"

    X_nan = X.copy()
    X_nan[7, 2] = np.nan
    nan = _write_lightly(tmp_path / "nan.csv", X_nan, y)
    assert _refused(runner, tmp_path, nan) == "Error: features contain NaN or Inf in 1 row (first: row 7)"

    header = ["filenames", *[f"embedding_{j}" for j in range(5)], "label"]
    missing = _write_lightly(tmp_path / "missing.csv", X, y, header=header)
    assert _refused(runner, tmp_path, missing).startswith(f"Error: {missing} has no 'labels' column")

    good = _write_lightly(tmp_path / "t.csv", X, y).read_bytes()
    truncated = tmp_path / "truncated.csv"
    truncated.write_bytes(good[: len(good) - 40])
    assert "(the last line has no end: is the file truncated?)" in _refused(runner, tmp_path, truncated)


# --- safetensors ------------------------------------------------------------------------


def test_safetensors_good_file_and_keys(runner, tmp_path):
    X, y = _data()
    path = tmp_path / "f.safetensors"
    st.save_file({"features": X, "labels": y.astype(np.int64)}, str(path))
    _check_roundtrip(runner, tmp_path, path, X, y)
    keyed = tmp_path / "k.safetensors"
    st.save_file({"emb": X.astype(np.float16), "cls": y.astype(np.int32)}, str(keyed))
    store = tmp_path / "k.h5"
    result = _run(
        runner, "extract", store, "--split", "train", "--from", keyed, "--features-key", "emb", "--labels-key", "cls"
    )
    assert result.exit_code == 0, result.stderr
    feats, labels, classes, _ = _stored(store)
    np.testing.assert_array_equal(feats, X.astype(np.float16))
    assert [classes[i] for i in labels] == [str(v) for v in y]


def test_safetensors_bad_files(runner, tmp_path):
    X, y = _data()
    wrong = tmp_path / "wrong.safetensors"
    st.save_file({"features": X.reshape(23, 5, 1), "labels": y}, str(wrong))
    assert _refused(runner, tmp_path, wrong) == (
        "Error: features must be a 2-D array (n, d); got a 3-D array of shape (23, 5, 1)"
    )
    X_nan = X.copy()
    X_nan[3, 0] = np.inf
    nan = tmp_path / "nan.safetensors"
    st.save_file({"features": X_nan, "labels": y}, str(nan))
    assert _refused(runner, tmp_path, nan) == "Error: features contain NaN or Inf in 1 row (first: row 3)"
    missing = tmp_path / "missing.safetensors"
    st.save_file({"feats": X}, str(missing))
    assert _refused(runner, tmp_path, missing) == f"Error: {missing} has no tensor 'features' (it holds: feats)"
    good = tmp_path / "good.safetensors"
    st.save_file({"features": X, "labels": y}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    assert _refused(runner, tmp_path, truncated) == (
        f"Error: {truncated} is not a valid safetensors file (or it is truncated)"
    )


# --- parquet ----------------------------------------------------------------------------


def _table(X, y, *, fixed=True, label="label"):
    values = pa.array(X.reshape(-1))
    emb = (
        pa.FixedSizeListArray.from_arrays(values, X.shape[1])
        if fixed
        else pa.ListArray.from_arrays(pa.array(np.arange(0, X.size + 1, X.shape[1], dtype=np.int32)), values)
    )
    return pa.table({"id": [f"s{i}" for i in range(len(X))], "embedding": emb, label: y})


@pytest.mark.parametrize("fixed", [True, False])
def test_parquet_file_and_folder(runner, tmp_path, fixed):
    X, y = _data(n=40)
    path = tmp_path / "f.parquet"
    pq.write_table(_table(X, y, fixed=fixed), path, row_group_size=7)  # blocks span row groups
    _check_roundtrip(runner, tmp_path, path, X, y)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(_table(X[:15], y[:15], fixed=fixed), folder / "part-000.parquet")
    pq.write_table(_table(X[15:], y[15:], fixed=fixed), folder / "part-001.parquet")
    (tmp_path / "s.h5").unlink()
    store = _check_roundtrip(runner, tmp_path, folder, X, y)
    with FeatureStore(store) as fs:
        assert list(fs.split("train").ids) == [f"s{i}" for i in range(15)] + [f"s{i}" for i in range(25)]


def test_parquet_bad_files(runner, tmp_path):
    X, y = _data(n=20)
    ragged = X.reshape(-1).tolist()
    offsets = list(range(0, 100, 5)) + [99]  # the last embedding has 4 values
    t = pa.table(
        {"embedding": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ragged[:99])), "label": y}
    )
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(t, wrong)
    assert _refused(runner, tmp_path, wrong) == (
        f"Error: column 'embedding' of {wrong}: row 19 has 4 values, the first row has 5"
    )
    X_nan = X.copy()
    X_nan[11, 1] = np.nan
    nan = tmp_path / "nan.parquet"
    pq.write_table(_table(X_nan, y), nan)
    assert _refused(runner, tmp_path, nan) == "Error: features contain NaN or Inf in 1 row (first: row 11)"
    missing = tmp_path / "missing.parquet"
    pq.write_table(_table(X, y), missing)
    assert _refused(runner, tmp_path, missing, "--features-key", "emb") == (
        f"Error: {missing} has no column 'emb' (it has: id, embedding, label)"
    )
    assert _refused(runner, tmp_path, missing, "--labels-key", "cls") == (
        f"Error: {missing} has no column 'cls' (it has: id, embedding, label)"
    )
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(missing.read_bytes()[:-30])
    assert _refused(runner, tmp_path, truncated) == f"Error: {truncated} is not a valid parquet file"


# --- embedding-reader / clip-retrieval layout ---------------------------------------------


def _layout(root: Path, X, y, cuts=(0, 9, 23)):
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for shard, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(root / "img_emb" / f"img_emb_{shard}.npy", X[a:b])
        pq.write_table(
            pa.table({"image_path": [f"im{i}.jpg" for i in range(a, b)], "label": y[a:b]}),
            root / "metadata" / f"metadata_{shard}.parquet",
        )
    return root


def test_embedding_reader_layout(runner, tmp_path):
    X, y = _data()
    root = _layout(tmp_path / "clip", X, y)
    store = _check_roundtrip(runner, tmp_path, root, X, y)
    with FeatureStore(store) as fs:
        assert list(fs.split("train").ids) == [f"im{i}.jpg" for i in range(23)]


def test_embedding_reader_bad_folders(runner, tmp_path):
    X, y = _data()
    wrong = _layout(tmp_path / "wrong", X, y)
    np.save(wrong / "img_emb" / "img_emb_1.npy", X[9:23, :4])
    assert _refused(runner, tmp_path, wrong).startswith("Error: shards have different dimensions: [4, 5]")
    X_nan = X.copy()
    X_nan[12, 0] = np.nan
    nan = _layout(tmp_path / "nan", X_nan, y)
    assert _refused(runner, tmp_path, nan) == "Error: features contain NaN or Inf in 1 row (first: row 12)"
    missing = _layout(tmp_path / "missing", X, y)
    (missing / "metadata" / "metadata_1.parquet").unlink()
    assert _refused(runner, tmp_path, missing) == (
        "Error: embedding shard img_emb_1.npy has no metadata file with number 1"
    )
    truncated = _layout(tmp_path / "truncated", X, y)
    shard = truncated / "img_emb" / "img_emb_0.npy"
    shard.write_bytes(shard.read_bytes()[:-20])
    assert _refused(runner, tmp_path, truncated) == f"Error: {shard} is truncated"


# --- labels ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["U", "S"])
def test_string_npy_labels(runner, tmp_path, dtype):
    X, y = _data()
    names = np.array(["cat", "dog", "emu"])[y].astype(dtype)
    np.save(tmp_path / "f.npy", X)
    np.save(tmp_path / "l.npy", names)
    store = tmp_path / "s.h5"
    result = _run(
        runner, "extract", store, "--split", "train", "--from", tmp_path / "f.npy", "--labels", tmp_path / "l.npy"
    )
    assert result.exit_code == 0, result.stderr
    _, labels, classes, _ = _stored(store)
    assert [classes[i] for i in labels] == np.array(["cat", "dog", "emu"])[y].tolist()


def test_class_names_file(runner, tmp_path):
    X, y = _data()
    path = tmp_path / "f.safetensors"
    st.save_file({"features": X, "labels": y}, str(path))
    (tmp_path / "labels.txt").write_text("cat\ndog\nemu\n")
    store = tmp_path / "s.h5"
    result = _run(
        runner, "extract", store, "--split", "train", "--from", path, "--class-names", tmp_path / "labels.txt"
    )
    assert result.exit_code == 0, result.stderr
    _, labels, classes, _ = _stored(store)
    assert classes == ["cat", "dog", "emu"]
    assert [classes[i] for i in labels] == np.array(["cat", "dog", "emu"])[y].tolist()
    (tmp_path / "dup.txt").write_text("cat\ncat\nemu\n")
    assert _refused(runner, tmp_path, path, "--class-names", tmp_path / "dup.txt") == (
        f"Error: {tmp_path / 'dup.txt'} names class 'cat' twice (lines 1 and 2)"
    )


@pytest.mark.parametrize("quoted", [False, True])
def test_lightly_csv_with_a_16_mib_field(runner, tmp_path, quoted):
    """Was "unexpected Error: field larger than field limit (131072)"."""
    X, y = _data()
    path = _write_lightly(tmp_path / "embeddings.csv", X, y)
    lines = path.read_bytes().split(b"\n")
    name = b"x" * 2**24
    lines[3] = (b'"' + name + b', a"' if quoted else name) + lines[3][lines[3].index(b",") :]
    path.write_bytes(b"\n".join(lines))
    before = sorted(p.name for p in tmp_path.iterdir()), path.read_bytes()
    result = _run(runner, "extract", tmp_path / "s.h5", "--split", "train", "--from", path)
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))] == [
        f"Error: {path} line 4 has a field longer than 131072 characters",
        "Hint: a lightly embeddings.csv holds file names, numbers and labels: is this file damaged?",
    ]
    assert "Traceback" not in result.stderr
    assert (sorted(p.name for p in tmp_path.iterdir()), path.read_bytes()) == before


def test_lightly_csv_with_a_line_that_never_ends(runner, tmp_path):
    """A line longer than any the header's width allows is refused before it is read whole."""
    from nnkcli.extract import tabular

    X, y = _data()
    path = _write_lightly(tmp_path / "embeddings.csv", X, y)
    with open(path, "ab") as f:
        f.write(b"1," * (7 * (2 * tabular.MAX_CSV_FIELD + 3)))
    result = _run(runner, "extract", tmp_path / "s.h5", "--split", "train", "--from", path)
    assert result.exit_code == 1
    assert f"Error: {path} line {len(X) + 2} has a field longer than 131072 characters" in result.stderr
