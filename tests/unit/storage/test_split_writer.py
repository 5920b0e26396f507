"""SplitWriter: streaming appends, atomic commit, resuming after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nnkcli.errors import InputError, StoreError
from nnkcli.storage.split_writer import SplitWriter, partial_path
from nnkcli.storage.store import FeatureStore, write_split

REPO = Path(__file__).resolve().parents[3]
NAMES = ["cat", "dog", "bird"]


def _data(n=23, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(-1, 3, size=n), [f"im{i}.png" for i in range(n)]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_streamed_split_equals_write_split(tmp_path):
    x, y, ids = _data()
    with SplitWriter(
        tmp_path / "a.h5", "train", dim=5, class_names=NAMES, source="model", attrs={"checkpoint_sha256": "ab" * 32}
    ) as writer:
        for start in range(0, 23, 7):
            writer.append(x[start : start + 7], y[start : start + 7], ids[start : start + 7])
        assert writer.n_written == 23
    reference = write_split(tmp_path / "b.h5", "train", x, y, ids=ids, class_names=NAMES, source="model")
    assert writer.summary["content_sha256"] == reference["content_sha256"]
    with FeatureStore(tmp_path / "a.h5") as fs:
        split = fs.split("train")
        np.testing.assert_array_equal(split.read(), x)
        np.testing.assert_array_equal(split.labels, y)
        assert split.ids == ids and fs.classes == NAMES
        assert split.attrs["checkpoint_sha256"] == "ab" * 32 and split.attrs["source"] == "model"
    assert _hidden(tmp_path) == []


def test_an_exception_leaves_nothing(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", *_data()[:2], class_names=NAMES, source="t")
    before = store.read_bytes()
    with pytest.raises(RuntimeError), SplitWriter(store, "val", dim=5, class_names=NAMES, source="m") as writer:
        writer.append(*_data()[:2])
        raise RuntimeError("model crashed")
    assert store.read_bytes() == before
    assert _hidden(tmp_path) == []


def test_checks_before_extraction_starts(tmp_path):
    store = tmp_path / "s.h5"
    write_split(store, "train", *_data()[:2], class_names=NAMES, source="t")
    with pytest.raises(StoreError, match=r"^split 'train' already exists"):
        SplitWriter(store, "train", dim=5, source="m")
    with pytest.raises(InputError, match=r"^features have dimension 4 but .* holds dimension 5$"):
        SplitWriter(store, "val", dim=4, source="m")
    with pytest.raises(InputError, match="^invalid split name"):
        SplitWriter(store, "a/b", dim=5, source="m")


def test_bad_blocks_are_refused_with_the_split_row_number(tmp_path):
    x, y, _ = _data()
    with (
        pytest.raises(InputError) as err,
        SplitWriter(tmp_path / "s.h5", "v", dim=5, class_names=NAMES, source="m") as writer,
    ):
        writer.append(x[:10], y[:10])
        bad = x[10:20].copy()
        bad[4] = 0.0
        writer.append(bad, y[10:20])
    assert str(err.value) == "features have 1 all-zero row (first: row 14); cosine similarity is undefined for them"
    assert not (tmp_path / "s.h5").exists()
    with SplitWriter(tmp_path / "s.h5", "v", dim=5, class_names=NAMES, source="m") as writer:
        with pytest.raises(InputError, match=r"^label 3 at row 0 is outside the 3 class names$"):
            writer.append(x[:2], [3, 0])
        with pytest.raises(InputError, match=r"^appended features must be a real \(m, 5\) array"):
            writer.append(x[:2, :4], [0, 0])
        writer.append(x[:2], [0, 1], ids=["a", "b"])
        with pytest.raises(InputError, match="give ids with every appended block or with none"):
            writer.append(x[2:4], [0, 1])


def test_raw_integer_labels_without_names(tmp_path):
    x, _, _ = _data(6)
    with SplitWriter(tmp_path / "s.h5", "t", dim=5, source="m") as writer:
        writer.append(x, [10, 30, 10, -1, 30, 20])
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.classes == ["10", "20", "30"]
        assert fs.split("t").labels.tolist() == [0, 2, 0, -1, 2, 1]


def test_resume_after_an_interrupted_run(tmp_path):
    store = tmp_path / "s.h5"
    x, y, ids = _data(30)
    kw = dict(
        dim=5, class_names=NAMES, source="m", attrs={"checkpoint_sha256": "c0ffee"}, resumable=True, expected_rows=30
    )
    with pytest.raises(KeyboardInterrupt), SplitWriter(store, "train", **kw) as writer:
        writer.append(x[:10], y[:10], ids[:10])
        writer.append(x[10:20], y[10:20], ids[10:20])
        raise KeyboardInterrupt
    assert not store.exists()
    assert partial_path(store, "train").is_dir()
    with SplitWriter(store, "train", **kw) as writer:
        assert writer.n_written == 20
        assert writer.written_ids() == ids[:20]
        writer.append(x[20:], y[20:], ids[20:])
    with FeatureStore(store) as fs:
        np.testing.assert_array_equal(fs.split("train").read(), x)
        np.testing.assert_array_equal(fs.split("train").labels, y)
        assert fs.split("train").ids == ids
    assert not partial_path(store, "train").exists()


def test_a_torn_partial_is_cut_to_whole_rows(tmp_path):
    store = tmp_path / "s.h5"
    x, y, ids = _data(12)
    kw = dict(dim=5, class_names=NAMES, source="m", resumable=True)
    writer = SplitWriter(store, "train", **kw)
    writer.append(x[:8], y[:8], ids[:8])
    writer.abort()
    staging = partial_path(store, "train")
    # a kill in the middle of the next append: 1.5 rows of features, 1 label, half an id line
    with open(staging / "features.bin", "ab") as fh:
        fh.write(x[8:10].tobytes()[:30])
    with open(staging / "labels.bin", "ab") as fh:
        fh.write(np.int64(1).tobytes())
    with open(staging / "ids.jsonl", "ab") as fh:
        fh.write(b'"im8.p')
    with SplitWriter(store, "train", **kw) as writer:
        assert writer.n_written == 8
        writer.append(x[8:], y[8:], ids[8:])
    with FeatureStore(store) as fs:
        np.testing.assert_array_equal(fs.split("train").read(), x)
        assert fs.split("train").ids == ids


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": 4}, "different dim (5 vs now 4)"),
        ({"attrs": {"checkpoint_sha256": "other"}}, 'different attrs ({"checkpoint_sha256": "c0ffee"} vs now '),
        ({"source": "another model"}, 'different source ("m" vs now "another model")'),
    ],
)
def test_a_partial_with_other_parameters_is_refused(tmp_path, change, message):
    store = tmp_path / "s.h5"
    kw = dict(dim=5, class_names=NAMES, source="m", attrs={"checkpoint_sha256": "c0ffee"}, resumable=True)
    writer = SplitWriter(store, "train", **kw)
    writer.append(*_data(4)[:2])
    writer.abort()
    with pytest.raises(StoreError) as err:
        SplitWriter(store, "train", **{**kw, **change})
    assert message in str(err.value)
    assert err.value.hint == f"drop --resume to start over, or delete {partial_path(store, 'train')}"


def test_a_run_without_resume_deletes_the_stale_partial_when_done(tmp_path):
    store = tmp_path / "s.h5"
    writer = SplitWriter(store, "train", dim=5, source="m", resumable=True)
    writer.append(_data(4)[0])
    writer.abort()
    with SplitWriter(store, "train", dim=5, source="m") as writer:
        assert writer.n_written == 0
        writer.append(_data(6)[0])
    assert _hidden(tmp_path) == []
    with FeatureStore(store) as fs:
        assert fs.split("train").n == 6


_KILLED_EXTRACTION = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from nnkcli.storage.split_writer import SplitWriter

    with SplitWriter(sys.argv[1], "train", dim=4, source="m", resumable=True) as writer:
        for block in range(1000):
            rows = np.arange(block * 10, block * 10 + 10, dtype=np.float32)[:, None] + np.ones((1, 4), np.float32)
            writer.append(rows, np.full(10, block % 3))
            print(writer.n_written, flush=True)
            time.sleep(0.02)
    """
)


def test_resume_after_sigkill(tmp_path):
    store = tmp_path / "s.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_EXTRACTION, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(3):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists()
    with SplitWriter(store, "train", dim=4, source="m", resumable=True) as writer:
        done = writer.n_written
        assert done >= 30 and done % 10 == 0
        for block in range(done // 10, 8):
            rows = np.arange(block * 10, block * 10 + 10, dtype=np.float32)[:, None] + np.ones((1, 4), np.float32)
            writer.append(rows, np.full(10, block % 3))
    with FeatureStore(store) as fs:
        split = fs.split("train")
        np.testing.assert_array_equal(split.read()[:, 0], np.arange(80) + 1)
        assert split.labels.tolist() == [b % 3 for b in range(8) for _ in range(10)]
