"""The HDF5 feature store: round trips, chunked I/O, refusals and crash safety."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from nnkcli import __version__
from nnkcli.errors import InputError, StoreError
from nnkcli.storage.store import FORMAT_VERSION, FeatureStore, write_split

REPO = Path(__file__).resolve().parents[3]


def _features(n=20, d=6, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def _oracle_sha(features: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(features.tobytes() + labels.astype("<i8").tobytes()).hexdigest()


class RowSpy:
    """A row source that records which slices were read (and can refuse big ones)."""

    def __init__(self, data: np.ndarray, max_rows: int):
        self.data, self.max_rows = data, max_rows
        self.shape, self.dtype, self.slices = data.shape, data.dtype, []

    def __getitem__(self, index):
        rows = index.stop - index.start
        if rows > self.max_rows:
            raise AssertionError(f"asked for {rows} rows at once")
        self.slices.append((index.start, index.stop))
        return self.data[index]


# -- round trip ---------------------------------------------------------------------------
def test_round_trip(tmp_path):
    store = tmp_path / "s.h5"
    x = _features(20, 6)
    y = np.array([7, 3, 3, -1, 9] * 4)
    ids = [f"img/{i}.jpg" for i in range(20)]
    summary = write_split(store, "train", x, y, ids=ids, source="unit test", attrs={"run": "r1", "epoch": 3})
    with FeatureStore(store) as fs:
        assert fs.splits == ["train"] and fs.dim == 6 and "train" in fs and "val" not in fs
        assert fs.classes == ["3", "7", "9"]
        split = fs.split("train")
        assert (split.n, split.dim, split.dtype) == (20, 6, np.float32)
        np.testing.assert_array_equal(split.features[()], x)
        expected_ids = np.array([1, 0, 0, -1, 2] * 4)
        np.testing.assert_array_equal(split.labels, expected_ids)
        assert split.labels.dtype == np.int64
        assert split.ids == ids
        attrs = split.attrs
        assert attrs["source"] == "unit test" and attrs["run"] == "r1" and attrs["epoch"] == 3
        assert attrs["nnkcli_version"] == __version__
        assert datetime.fromisoformat(attrs["created_at"]).utcoffset().total_seconds() == 0
        assert split.content_sha256 == _oracle_sha(x, expected_ids) == summary["content_sha256"]
        assert fs.attrs["nnk_format"] == "features" and fs.attrs["format_version"] == FORMAT_VERSION
    assert summary == {
        "store": str(store),
        "split": "train",
        "n": 20,
        "dim": 6,
        "dtype": "float32",
        "n_classes": 3,
        "unlabelled": 4,
        "store_classes": 3,
        "new_classes": ["3", "7", "9"],
        "replaced": False,
        "source": "unit test",
        "content_sha256": summary["content_sha256"],
    }


def test_dtypes_float16_kept_others_float32(tmp_path):
    store = tmp_path / "s.h5"
    x16 = _features(5, 3, dtype=np.float16)
    write_split(store, "a", x16, source="t")
    write_split(store, "b", np.arange(1, 16, dtype=np.int32).reshape(5, 3), source="t")
    write_split(store, "c", _features(5, 3, dtype=np.float64), source="t")
    with FeatureStore(store) as fs:
        assert fs.split("a").dtype == np.float16
        np.testing.assert_array_equal(fs.split("a").features[()], x16)
        assert fs.split("a").read().dtype == np.float32
        assert fs.split("b").dtype == np.float32 and fs.split("c").dtype == np.float32
        np.testing.assert_array_equal(fs.split("b").read(), np.arange(1, 16).reshape(5, 3))


def test_torch_tensor_input(tmp_path):
    torch = pytest.importorskip("torch")
    x = _features(4, 3)
    write_split(tmp_path / "s.h5", "t", torch.from_numpy(x), torch.tensor([1, 0, 1, 0]), source="t")
    with FeatureStore(tmp_path / "s.h5") as fs:
        np.testing.assert_array_equal(fs.split("t").read(), x)


# -- chunked I/O --------------------------------------------------------------------------
def test_writes_in_blocks_and_reads_in_chunks(tmp_path):
    x = _features(103, 5)
    spy = RowSpy(x, max_rows=10)
    write_split(tmp_path / "s.h5", "train", spy, np.zeros(103, dtype=int), source="t", chunk_rows=10)
    assert spy.slices == [(s, min(103, s + 10)) for s in range(0, 103, 10)]
    with FeatureStore(tmp_path / "s.h5") as fs:
        split = fs.split("train")
        assert split.features.chunks[1] == 5  # HDF5 chunks hold whole rows
        starts, blocks = zip(*split.iter_chunks(25))
        assert starts == (0, 25, 50, 75, 100)
        assert [b.shape[0] for b in blocks] == [25, 25, 25, 25, 3]
        np.testing.assert_array_equal(np.concatenate(blocks), x)
        np.testing.assert_array_equal(split.read(40, 47), x[40:47])
        np.testing.assert_array_equal(split.read(100, 500), x[100:])


def test_memmapped_input_is_never_loaded_whole(tmp_path):
    # 48 MB on disk, copied in 1 MB blocks: traced numpy memory must stay far below 48 MB
    n, d = 49152, 256
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    mm[:] = 1.0
    mm[::7, 0] = 2.0
    mm.flush()
    del mm
    source = np.load(path, mmap_mode="r")
    tracemalloc.start()
    try:
        write_split(tmp_path / "s.h5", "big", source, source="t", chunk_rows=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    with FeatureStore(tmp_path / "s.h5") as fs:
        split = fs.split("big")
        assert split.n == n
        np.testing.assert_array_equal(split.read(0, 15)[:, 0], [2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2])


# -- several splits -----------------------------------------------------------------------
def test_class_names_reconciled_across_splits(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(4, 3), ["cat", "dog", "dog", "cat"], source="t")
    summary = write_split(store, "val", _features(3, 3, seed=1), ["bird", "dog", "cat"], source="t")
    assert summary["new_classes"] == ["bird"]
    with FeatureStore(store) as fs:
        assert fs.classes == ["cat", "dog", "bird"]
        assert fs.split("train").labels.tolist() == [0, 1, 1, 0]
        assert fs.split("val").labels.tolist() == [2, 1, 0]
        assert fs.split("val").class_counts() == ({"cat": 1, "dog": 1, "bird": 1}, 0)


def test_overwrite_replaces_one_split_and_reclaims_space(tmp_path):
    store = tmp_path / "s.h5"
    train = _features(50, 8)
    write_split(store, "train", train, np.arange(50) % 5, source="t")
    write_split(store, "val", _features(400, 8, seed=1), source="t")
    with pytest.raises(StoreError, match=r"^split 'val' already exists in .*s\.h5$"):
        write_split(store, "val", _features(400, 8, seed=2), source="t")
    sizes = []
    for seed in range(3):
        summary = write_split(store, "val", _features(400, 8, seed=seed + 2), source=f"v{seed}", overwrite=True)
        sizes.append(store.stat().st_size)
        assert summary["replaced"]
    assert max(sizes) - min(sizes) < 4096  # no growth: the file is rebuilt, not patched
    with FeatureStore(store) as fs:
        np.testing.assert_array_equal(fs.split("train").read(), train)
        np.testing.assert_array_equal(fs.split("val").read(), _features(400, 8, seed=4))
        assert fs.split("val").attrs["source"] == "v2"


def test_overwriting_the_only_split_may_change_the_dimension(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(5, 4), source="t")
    write_split(store, "train", _features(5, 7), source="t", overwrite=True)
    with FeatureStore(store) as fs:
        assert fs.dim == 7


# -- refusals -----------------------------------------------------------------------------
def _nan_features():
    x = _features(10, 4)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    return x


def _zero_features():
    x = _features(10, 4)
    x[[2, 5, 6]] = 0.0
    return x


@pytest.mark.parametrize(
    ("features", "labels", "error", "message"),
    [
        (_nan_features(), None, InputError, "features contain NaN or Inf in 2 rows (first: row 3)"),
        (np.full((3, 2), 1e300), None, InputError, "features contain NaN or Inf in 3 rows (first: row 0)"),
        (
            _zero_features(),
            None,
            InputError,
            "features have 3 all-zero rows (first: row 2); cosine similarity is undefined for them",
        ),
        (np.ones(5), None, InputError, "features must be a 2-D array (n, d); got a 1-D array of shape (5,)"),
        (
            np.ones((2, 3, 4)),
            None,
            InputError,
            "features must be a 2-D array (n, d); got a 3-D array of shape (2, 3, 4)",
        ),
        (
            np.array([[1, "a"]], dtype=object),
            None,
            InputError,
            "features have the unsupported dtype object; expected real numbers",
        ),
        (
            np.ones((2, 2), dtype=np.complex64),
            None,
            InputError,
            "features have the complex dtype complex64; expected real numbers",
        ),
        (np.ones((4, 3)), [0, 1, 2], InputError, "features have 4 rows but labels have 3"),
        (np.ones((0, 3)), None, InputError, "features are empty (shape (0, 3))"),
        (np.ones((3, 0)), None, InputError, "features are empty (shape (3, 0))"),
    ],
)
def test_bad_features_are_refused_and_nothing_is_written(tmp_path, features, labels, error, message):
    store = tmp_path / "s.h5"
    with pytest.raises(error) as err:
        write_split(store, "train", features, labels, source="t")
    assert str(err.value) == message
    assert err.value.hint
    assert not store.exists()
    write_split(store, "train", _features(5, 4), source="t")
    before = store.read_bytes()
    with pytest.raises(error):
        write_split(store, "val", features, labels, source="t")
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.lock"]


def test_dimension_must_match_the_store(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(5, 4), source="t")
    before = store.read_bytes()
    with pytest.raises(InputError) as err:
        write_split(store, "val", _features(5, 3), source="t")
    assert str(err.value) == f"features have dimension 3 but {store} holds dimension 4"
    assert store.read_bytes() == before


@pytest.mark.parametrize("name", ["", "a/b", "classes", ".hidden", "tab\there"])
def test_bad_split_names(tmp_path, name):
    with pytest.raises(InputError, match="^invalid split name"):
        write_split(tmp_path / "s.h5", name, _features(), source="t")


@pytest.mark.parametrize("key", ["source", "content_sha256", "created_at", "nnkcli_version"])
def test_reserved_attrs_are_refused(tmp_path, key):
    with pytest.raises(InputError, match=f"^attribute '{key}' is set by nnkcli"):
        write_split(tmp_path / "s.h5", "t", _features(), source="t", attrs={key: "x"})


def test_ids_length_must_match(tmp_path):
    with pytest.raises(InputError, match=r"^features have 20 rows but ids have 2$"):
        write_split(tmp_path / "s.h5", "t", _features(), ids=["a", "b"], source="t")


# -- reading what is not a store ----------------------------------------------------------
def test_missing_store(tmp_path):
    with pytest.raises(StoreError) as err:
        FeatureStore(tmp_path / "nope.h5")
    assert str(err.value) == f"store not found: {tmp_path / 'nope.h5'}"
    assert "nnk extract" in err.value.hint


def test_not_hdf5_and_not_a_store(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(StoreError, match=r"is not an HDF5 file \(or it is damaged\)$"):
        FeatureStore(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(StoreError, match=r"other\.h5 is not an nnkcli feature store$"):
        FeatureStore(other)
    # and a write refuses to clobber it
    before = other.read_bytes()
    with pytest.raises(StoreError, match="is not an nnkcli feature store"):
        write_split(other, "train", _features(), source="t")
    assert other.read_bytes() == before


def test_newer_format_version_is_refused(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(), source="t")
    with h5py.File(store, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError) as err:
        FeatureStore(store)
    assert str(err.value) == f"{store} uses store format version 2; this nnkcli reads version 1"
    assert err.value.hint == "upgrade nnkcli: pip install -U nnkcli"


def test_missing_split_names_the_available_ones(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(), source="t")
    write_split(store, "val", _features(), source="t")
    with FeatureStore(store) as fs, pytest.raises(StoreError) as err:
        fs.split("test")
    assert str(err.value) == f"split 'test' not found in {store}"
    assert err.value.hint == "available splits: train, val"


def test_store_written_by_another_tool(tmp_path):
    # no content_sha256, no labels, no classes: still readable, hash computed on the fly
    store = tmp_path / "foreign.h5"
    x = _features(30, 4)
    with h5py.File(store, "w") as f:
        f.attrs["nnk_format"] = "features"
        f.attrs["format_version"] = 1
        f.create_dataset("train/features", data=x)
    with FeatureStore(store) as fs:
        split = fs.split("train")
        assert split.labels.tolist() == [-1] * 30 and split.ids is None and fs.classes is None
        assert split.content_sha256 == _oracle_sha(x, np.full(30, -1))
        assert fs.describe()["splits"]["train"]["unlabelled"] == 30


def test_describe(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(6, 3), ["a", "b", "a", "a", "b", "a"], source="src", attrs={"k": "v"})
    write_split(store, "val", _features(3, 3), ["b", "", "b"], source="src2")
    with FeatureStore(store) as fs:
        d = fs.describe()
    assert d["classes"] == ["a", "b"] and d["dim"] == 3 and d["format_version"] == 1
    assert d["splits"]["train"]["class_counts"] == {"a": 4, "b": 2}
    assert d["splits"]["val"]["class_counts"] == {"a": 0, "b": 2}
    assert d["splits"]["val"]["unlabelled"] == 1 and d["splits"]["val"]["n_classes"] == 1
    assert d["splits"]["train"]["attrs"]["k"] == "v"


# -- crash safety -------------------------------------------------------------------------
_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from nnkcli.storage.store import write_split

    class Slow:
        # rows for a big split, handed out slowly; announces when writing is under way
        shape, dtype, calls = (100_000, 8), np.dtype("float32"), 0
        def __getitem__(self, index):
            self.calls += 1
            if self.calls == int(sys.argv[3]):
                print("WRITING", flush=True)
                time.sleep(float(sys.argv[4]))
            return np.ones((index.stop - index.start, 8), np.float32)

    write_split(sys.argv[1], sys.argv[2], Slow(), source="slow", chunk_rows=1000)
    """
)


def _start_writer(store: Path, split: str, announce_at: int = 3, sleep: float = 60.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(store), split, str(announce_at), str(sleep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.parametrize("announce_at", [1, 40])
def test_killed_writer_leaves_the_old_store_intact(tmp_path, sig, announce_at):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(50, 8), np.arange(50) % 3, source="t")
    before = store.read_bytes()
    proc = _start_writer(store, "val", announce_at)
    try:
        assert proc.stdout.readline().strip() == "WRITING", proc.stderr.read()
        temps = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        assert len(temps) == 1  # the new store is being built beside the old one
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert store.read_bytes() == before
    with FeatureStore(store) as fs:
        assert fs.splits == ["train"]
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    if sig == signal.SIGINT:
        assert leftovers == []  # Ctrl-C cleans up
    else:
        assert len(leftovers) == 1
        write_split(store, "val", _features(5, 8), source="t")  # the next write removes it
        assert [p for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_concurrent_writers_do_not_lose_a_split(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", _features(10, 8), source="t")
    procs = [_start_writer(store, name, announce_at=2, sleep=0.5) for name in ("a", "b")]
    for proc in procs:
        proc.wait(timeout=120)
        assert proc.returncode == 0, proc.stderr.read()
    with FeatureStore(store) as fs:
        assert fs.splits == ["a", "b", "train"]
        assert fs.split("a").n == fs.split("b").n == 100_000
