"""Importers: .npy/.npz arrays, DINO --dump_features dumps, VISSL extraction folders."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.extract import detect_format, load_features, read_labels
from nnkcli.extract.arrays import FileRows, open_npy, open_npz_member
from nnkcli.extract.vissl import ShardedRows
from nnkcli.storage.store import FeatureStore, write_split

DATA = Path(__file__).resolve().parents[2] / "data"


def _fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURES = _fixtures_module()
TRUTH = FIXTURES.truth()


def test_committed_fixtures_are_what_the_script_makes(tmp_path):
    pytest.importorskip("torch")
    FIXTURES.make(tmp_path)
    for path in sorted(DATA.rglob("*.np[yz]")):
        rel = path.relative_to(DATA)
        assert path.read_bytes() == (tmp_path / rel).read_bytes(), rel
    assert sorted(p.name for p in (DATA / "dino_dump").iterdir()) == sorted(
        p.name for p in (tmp_path / "dino_dump").iterdir()
    )


# -- format detection ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("tiny_features.npy", "npy"),
        ("tiny.npz", "npz"),
        ("dino_dump", "dino"),
        ("dino_dump/trainfeat.pth", "dino"),
        ("vissl", "vissl"),
        ("vissl/rank0_chunk0_train_heads_features.npy", "vissl"),
    ],
)
def test_detect_format(path, fmt):
    assert detect_format(DATA / path) == fmt


def test_detect_format_errors(tmp_path):
    with pytest.raises(InputError, match=rf"^input not found: {tmp_path}/x\.npy$"):
        detect_format(tmp_path / "x.npy")
    (tmp_path / "f.tsv").write_text("1\t2\n")
    with pytest.raises(
        InputError,
        match=r"unsupported input .*f\.tsv: expected \.npy, \.npz, \.csv \(lightly\), "
        r"\.safetensors, \.parquet, a DINO \.pth dump",
    ):
        detect_format(tmp_path / "f.tsv")
    with pytest.raises(InputError, match=r"is a folder but holds neither a DINO dump"):
        detect_format(tmp_path)


# -- arrays -------------------------------------------------------------------------------
def test_npy_is_read_lazily():
    imported = load_features(DATA / "tiny_features.npy", split="train", labels_path=DATA / "tiny_labels.npy")
    assert isinstance(imported.features, FileRows)
    np.testing.assert_array_equal(imported.features, TRUTH["npy_features"])
    np.testing.assert_array_equal(imported.labels, TRUTH["npy_labels"])
    assert imported.source == f"npy:{DATA / 'tiny_features.npy'}"
    assert imported.attrs == {"source_format": "npy", "labels_source": str(DATA / "tiny_labels.npy")}


def test_npz_members_and_keys():
    imported = load_features(DATA / "tiny.npz", split="val")
    assert isinstance(imported.features, FileRows)  # np.savez stores members uncompressed
    np.testing.assert_array_equal(imported.features, TRUTH["npz_features"])
    np.testing.assert_array_equal(imported.labels, TRUTH["npz_labels"])
    other = load_features(DATA / "tiny.npz", split="val", features_key="emb", labels_key="y")
    np.testing.assert_array_equal(other.features, TRUTH["npz_features"])
    with pytest.raises(InputError) as err:
        load_features(DATA / "tiny.npz", split="val", features_key="nope")
    assert str(err.value) == f"{DATA / 'tiny.npz'} has no array 'nope' (it holds: features, labels, emb, y)"
    assert err.value.hint == "name the array with --features-key"


def test_compressed_npz_is_loaded(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    np.savez_compressed(tmp_path / "c.npz", features=x)
    member = open_npz_member(tmp_path / "c.npz", "features", "features", "--features-key")
    assert isinstance(member, np.ndarray)
    np.testing.assert_array_equal(member, x)


@pytest.mark.parametrize("shape", [(37, 5), (37, 2, 3, 1), (0, 4), (6,)])
def test_file_rows_against_numpy(tmp_path, shape):
    data = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) + 0.5
    np.save(tmp_path / "a.npy", data)
    rows = open_npy(tmp_path / "a.npy")
    assert rows.shape == data.shape and rows.dtype == data.dtype
    np.testing.assert_array_equal(np.asarray(rows), data)
    for start, stop in [(0, 3), (5, 36), (30, 100), (4, 4)]:
        np.testing.assert_array_equal(rows[start:stop], data[start:stop])
    if len(shape) > 2:
        np.testing.assert_array_equal(rows.flat_rows()[2:9], data.reshape(shape[0], -1)[2:9])


def test_fortran_order_and_truncated_files(tmp_path):
    data = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(4, 5))
    np.save(tmp_path / "f.npy", data)
    np.testing.assert_array_equal(open_npy(tmp_path / "f.npy")[1:3], data[1:3])
    np.save(tmp_path / "t.npy", np.ones((100, 8), np.float32))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-40])
    with pytest.raises(InputError, match=r"t\.npy is truncated$"):
        open_npy(tmp_path / "t.npy")


def test_npz_without_labels_imports_unlabelled(tmp_path):
    np.savez(tmp_path / "u.npz", features=np.ones((3, 2)))
    assert load_features(tmp_path / "u.npz", split="q").labels is None
    with pytest.raises(InputError, match=r"has no array 'y' \(it holds: features\)$"):
        load_features(tmp_path / "u.npz", split="q", labels_key="y")


def test_pickled_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"^features have the unsupported dtype object; expected real numbers$"):
        load_features(tmp_path / "obj.npy", split="t")
    np.save(tmp_path / "lab.npy", np.array(["a", 1], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"are Python objects \(a pickled array\)"):
        read_labels(tmp_path / "lab.npy")


def test_invalid_files(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match=r"bad\.npy is not a valid \.npy file$"):
        load_features(tmp_path / "bad.npy", split="t")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.npz is not a valid \.npz file$"):
        load_features(tmp_path / "bad.npz", split="t")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3\n1\n-1\n3\n", [3, 1, -1, 3]), ("cat\ndog\n-1\n\n", ["cat", "dog", "-1"])],
)
def test_text_labels(tmp_path, text, expected):
    (tmp_path / "l.txt").write_text(text)
    assert read_labels(tmp_path / "l.txt").tolist() == expected


def test_text_labels_refuse_blank_lines(tmp_path):
    (tmp_path / "l.txt").write_text("a\n\nb\n")
    with pytest.raises(InputError, match=r"has an empty line \(line 2\)$"):
        read_labels(tmp_path / "l.txt")


def test_missing_labels_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_features(DATA / "tiny_features.npy", split="t", labels_path=tmp_path / "l.npy")
    assert str(err.value) == f"labels file not found: {tmp_path / 'l.npy'}"
    assert err.value.hint == "check the --labels path"


def test_options_that_do_not_apply(tmp_path):
    with pytest.raises(InputError, match="^--layer applies to VISSL folders only$"):
        load_features(DATA / "tiny_features.npy", split="t", layer="heads")
    with pytest.raises(
        InputError, match="^--features-key applies to npz, safetensors, parquet and embedding-reader inputs only$"
    ):
        load_features(DATA / "tiny_features.npy", split="t", features_key="x")


# -- DINO ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("split", "prefix"), [("train", "train"), ("val", "test"), ("test", "test")])
def test_dino_folder(split, prefix):
    pytest.importorskip("torch")
    imported = load_features(DATA / "dino_dump", split=split)
    np.testing.assert_array_equal(imported.features, TRUTH[f"dino_{prefix}_features"])
    np.testing.assert_array_equal(imported.labels, TRUTH[f"dino_{prefix}_labels"])
    assert imported.source == f"dino:{DATA / 'dino_dump' / f'{prefix}feat.pth'}"


def test_dino_file_and_its_labels():
    pytest.importorskip("torch")
    imported = load_features(DATA / "dino_dump" / "testfeat.pth", split="anything")
    np.testing.assert_array_equal(imported.labels, TRUTH["dino_test_labels"])
    relabelled = load_features(
        DATA / "dino_dump" / "testfeat.pth", split="x", labels_path=DATA / "dino_dump" / "trainlabels.pth"
    )
    np.testing.assert_array_equal(relabelled.labels, TRUTH["dino_train_labels"])


def test_dino_split_without_dump(tmp_path):
    pytest.importorskip("torch")
    shutil.copy(DATA / "dino_dump" / "trainfeat.pth", tmp_path)
    with pytest.raises(InputError) as err:
        load_features(tmp_path, split="val")
    assert str(err.value) == f"{tmp_path} has no DINO dump for split 'val' (it holds: trainfeat.pth)"


def test_dino_non_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"a": torch.ones(2)}, tmp_path / "trainfeat.pth")
    with pytest.raises(InputError, match=r"trainfeat\.pth holds a dict, not a tensor of features$"):
        load_features(tmp_path / "trainfeat.pth", split="train")


def test_dino_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(MissingDependencyError) as err:
        load_features(DATA / "dino_dump", split="train")
    assert str(err.value) == "reading DINO .pth dumps needs the optional 'torch' extra, which is not installed"
    assert err.value.hint == 'pip install "nnkcli[torch]"'


def test_dino_dump_into_a_store(tmp_path):
    pytest.importorskip("torch")
    imported = load_features(DATA / "dino_dump", split="train")
    write_split(tmp_path / "s.h5", "train", imported.features, imported.labels, source=imported.source)
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.classes == ["0", "1", "3"]  # labels {0, 1, 3}: 3 classes, not 4
        np.testing.assert_array_equal(fs.split("train").read(), TRUTH["dino_train_features"])


# -- VISSL --------------------------------------------------------------------------------
def test_vissl_shards_merged_in_index_order_without_padding():
    imported = load_features(DATA / "vissl", split="train", layer="heads")
    assert isinstance(imported.features, ShardedRows)
    np.testing.assert_array_equal(imported.features[0:10], TRUTH["vissl_train_heads"])
    np.testing.assert_array_equal(imported.labels, TRUTH["vissl_train_targets"])
    assert imported.ids == [str(i) for i in range(10)]
    assert imported.attrs == {
        "source_format": "vissl",
        "vissl_split": "train",
        "vissl_layer": "heads",
        "vissl_shards": 2,
        "vissl_duplicates_dropped": 1,
    }


def test_vissl_conv_layer_is_flattened():
    imported = load_features(DATA / "vissl", split="train", layer="res5")
    np.testing.assert_array_equal(imported.features[0:10], TRUTH["vissl_train_res5"].reshape(10, 6))


def test_vissl_val_reads_the_test_split_and_its_only_layer():
    imported = load_features(DATA / "vissl", split="val")
    np.testing.assert_array_equal(imported.features[0:4], TRUTH["vissl_test_heads"])
    assert imported.attrs["vissl_split"] == "test"


def test_vissl_single_file_names_split_and_layer():
    imported = load_features(DATA / "vissl" / "rank1_chunk0_train_res5_features.npy", split="whatever")
    assert imported.attrs["vissl_layer"] == "res5" and imported.features.shape == (10, 6)


def test_vissl_layer_errors(tmp_path):
    with pytest.raises(InputError) as err:
        load_features(DATA / "vissl", split="train")
    assert str(err.value) == f"{DATA / 'vissl'} holds several layers for split 'train' (heads, res5)"
    assert err.value.hint == "pick one with --layer"
    with pytest.raises(InputError, match=r"has no layer 'fc' for split 'train' \(it holds: heads, res5\)$"):
        load_features(DATA / "vissl", split="train", layer="fc")
    with pytest.raises(InputError, match=r"holds VISSL splits test, train; none matches --split extra$"):
        load_features(DATA / "vissl", split="extra", layer="heads")


def test_vissl_missing_shard_file(tmp_path):
    shutil.copytree(DATA / "vissl", tmp_path / "v")
    (tmp_path / "v" / "rank1_chunk0_test_heads_inds.npy").unlink()
    with pytest.raises(InputError, match=r"^VISSL shard file missing: .*rank1_chunk0_test_heads_inds\.npy$"):
        load_features(tmp_path / "v", split="test")


def test_sharded_rows_against_fancy_indexing():
    rng = np.random.default_rng(3)
    shards = [rng.normal(size=(m, 4)) for m in (7, 5, 9)]
    which = np.concatenate([np.full(len(s), i) for i, s in enumerate(shards)])
    local = np.concatenate([np.arange(len(s)) for s in shards])
    perm = rng.permutation(len(which))
    rows = ShardedRows(shards, which[perm], local[perm])
    oracle = np.concatenate(shards)[perm]
    for start, stop in [(0, 21), (3, 11), (20, 21), (5, 5)]:
        np.testing.assert_array_equal(rows[start:stop], oracle[start:stop])
