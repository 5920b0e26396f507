"""nnkcli.tracking: the history format (reading, appending), step parsing, ordering and rows.

The gates of a run (``tracking.source_gates``) are tested through ``nnk evaluate`` in tests/cli/.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from nnkcli.errors import InputError
from nnkcli.extract.torch_checkpoints import read_checkpoint_step, step_from_checkpoint
from nnkcli.tracking.history import (
    HISTORY_MARKER,
    HISTORY_SCHEMA_VERSION,
    HistoryError,
    append_entry,
    check_is_history,
    encode_entry,
    parse_history,
    read_history,
)
from nnkcli.tracking.sources import sha256_file, step_from_name
from nnkcli.tracking.views import history_rows, order_entries


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def entry(n: int, step=None, nnk=None, knn=None, **extra) -> dict:
    best = {}
    if nnk is not None:
        best["nnk"] = {"k": 10 * n or 10, "top1": nnk, "top5": nnk + 10}
    if knn is not None:
        best["knn"] = {"k": 5 * n or 5, "top1": knn, "top5": knn + 10}
    doc = {
        "source": f"/runs/ckpt{n}.pth",
        "sha256": sha(n),
        "step": step,
        "best": best,
        "results": [],
        "mtime": f"2024-01-0{n % 9 + 1}T00:00:00.000+00:00",
    }
    doc.update(extra)
    return doc


# -- sha256 / steps ------------------------------------------------------------------
def test_sha256_file_matches_hashlib_over_several_blocks(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)
    p = tmp_path / "x.bin"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("checkpoint0040.pth", (40, "checkpoint")),
        ("epoch_12.pt", (12, "epoch")),
        ("step-5000.ckpt", (5000, "step")),
        ("runs/exp1/epoch=3-step=500.ckpt", (3, "epoch")),
        ("model_iter_800.pth", (800, "iter")),
        ("resnet50_ep100.pth", (100, "ep")),
        ("global_step1200.pt", (1200, "global_step")),
        ("0007.pth", (7, "name")),
        ("EPOCH-9.pth", (9, "epoch")),
    ],
)
def test_step_from_name(name, expected):
    assert step_from_name(name) == expected


@pytest.mark.parametrize(
    "name", ["last.ckpt", "dino_vitbase16_pretrain.pth", "model_best.pth", "feats.h5", "ViT-B-16.pth", "split5.h5"]
)
def test_step_from_name_none(name):
    assert step_from_name(name) is None


def test_step_from_checkpoint_dict():
    assert step_from_checkpoint({"epoch": 7, "global_step": 900}) == (7, "epoch")
    assert step_from_checkpoint({"global_step": 900, "state_dict": {}}) == (900, "global_step")
    assert step_from_checkpoint({"epoch": 3.0}) == (3, "epoch")
    assert step_from_checkpoint({"epoch": True, "step": 4}) == (4, "step")
    assert step_from_checkpoint({"epoch": -1}) is None
    assert step_from_checkpoint({"state_dict": {}}) is None
    assert step_from_checkpoint(["epoch", 3]) is None


def test_read_checkpoint_step_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "checkpoint0099.pth"
    torch.save({"epoch": torch.tensor(41), "model": {"w": torch.zeros(2)}}, p)
    assert read_checkpoint_step(p) == (41, "epoch")
    torch.save({"model": {"w": torch.zeros(2)}}, p)
    assert read_checkpoint_step(p) is None
    p.write_bytes(b"not a checkpoint")
    assert read_checkpoint_step(p) is None


# -- reading -------------------------------------------------------------------------
def line(doc) -> str:
    return json.dumps({"schema_version": 1, **doc})


def test_parse_history_reports_malformed_lines_with_numbers():
    lines = [
        line(entry(1)),
        "",
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"schema_version": 2, "sha256": sha(5)}),
        json.dumps({"sha256": sha(6)}),
        json.dumps({"schema_version": 1, "sha256": "abc"}),
        line(entry(1)),
        line(entry(2)),
        '{"schema_version":1,"sha256":"' + sha(3)[:20],  # a torn last line
    ]
    hist = parse_history(lines)
    assert [e["sha256"] for e in hist.entries] == [sha(1), sha(2)]
    assert [e["_line"] for e in hist.entries] == [1, 9]
    assert [m.line_number for m in hist.malformed] == [3, 4, 5, 6, 7, 8, 10]
    reasons = [m.reason for m in hist.malformed]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "not a JSON object"
    assert reasons[2] == "schema_version 2 is newer than this nnkcli reads (1)"
    assert reasons[3] == "missing or bad schema_version None"
    assert reasons[4] == "missing or bad sha256"
    assert reasons[5] == f"duplicate entry for sha256 {sha(1)[:12]} with the same parameters (first on line 1)"
    assert str(hist.malformed[0]).startswith("line 3: not valid JSON")


def test_parse_history_rejects_non_utf8():
    hist = parse_history([b"\xff\xfe\n", line(entry(1)).encode()])
    assert [m.line_number for m in hist.malformed] == [1]
    assert len(hist.entries) == 1


def test_read_history_missing_and_directory(tmp_path):
    assert read_history(tmp_path / "none.jsonl").entries == []
    with pytest.raises(HistoryError, match="history file not found"):
        read_history(tmp_path / "none.jsonl", missing_ok=False)
    with pytest.raises(HistoryError, match="is a directory"):
        read_history(tmp_path)


def test_read_history_without_a_lock_file(tmp_path, monkeypatch):
    # a read-only directory: the shared lock file cannot be created, reading still works
    p = tmp_path / "h.jsonl"
    append_entry(p, entry(1))

    def refuse(path, shared=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("nnkcli.tracking.history.file_lock", refuse)
    assert len(read_history(p).entries) == 1


# -- writing -------------------------------------------------------------------------
def test_encode_entry_is_one_line_schema_first_without_private_keys():
    data = encode_entry({"sha256": sha(1), "note": "a\nb", "_line": 3, "schema_version": 99})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    doc = json.loads(data)
    assert list(doc)[0] == "schema_version" and doc["schema_version"] == HISTORY_SCHEMA_VERSION
    assert "_line" not in doc and doc["note"] == "a\nb"
    with pytest.raises(InputError, match="not plain JSON"):
        encode_entry({"sha256": sha(1), "x": float("nan")})


def test_append_then_read_round_trip(tmp_path):
    p = tmp_path / "h.jsonl"
    append_entry(p, entry(1, step=1, nnk=50.0))
    append_entry(p, entry(2, step=2, nnk=60.0))
    hist = read_history(p)
    assert [e["best"]["nnk"]["top1"] for e in hist.entries] == [50.0, 60.0]
    assert hist.malformed == []
    assert p.read_bytes().count(b"\n") == 2


def test_append_after_torn_line_keeps_the_new_line_whole(tmp_path):
    p = tmp_path / "h.jsonl"
    append_entry(p, entry(1))
    with open(p, "ab") as fh:  # an older writer died mid-line
        fh.write(b'{"schema_version":1,"sha256":"')
    append_entry(p, entry(2))
    hist = read_history(p)
    assert [e["sha256"] for e in hist.entries] == [sha(1), sha(2)]
    assert [m.line_number for m in hist.malformed] == [2]


def test_append_to_unwritable_path_is_a_history_error(tmp_path):
    with pytest.raises(HistoryError, match="cannot write history file"):
        append_entry(tmp_path / "missing-dir" / "h.jsonl", entry(1))


# -- ordering and rows -----------------------------------------------------------------
def test_order_by_step_then_stepless_by_time():
    a = entry(1, step=30)
    b = entry(2, step=10)
    c = entry(3, mtime="2024-02-01T00:00:00.000+00:00")
    d = entry(4, mtime="2024-01-01T00:00:00.000+00:00")
    assert [e["sha256"] for e in order_entries([a, b, c, d])] == [sha(2), sha(1), sha(4), sha(3)]


def test_history_rows_deltas_and_best():
    entries = [
        entry(3, step=30, nnk=70.0, knn=66.0),
        entry(1, step=10, nnk=60.0, knn=65.0),
        entry(2, step=20, nnk=72.5, knn=64.0),
        entry(4, step=40, knn=67.0),
    ]
    rows = history_rows(entries)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert [r["nnk_top1"] for r in rows] == [60.0, 72.5, 70.0, None]
    assert [r["nnk_delta_prev"] for r in rows] == [None, 12.5, -2.5, None]
    assert [r["nnk_delta_best"] for r in rows] == [-12.5, 0.0, -2.5, None]
    assert [r["knn_delta_prev"] for r in rows] == [None, -1.0, 2.0, 1.0]
    assert [r["knn_delta_best"] for r in rows] == [-2.0, -3.0, -1.0, 0.0]
    assert [r["best"] for r in rows] == ["", "nnk", "", "knn"]
    assert rows[1]["nnk_k"] == 20 and rows[3]["nnk_k"] is None
    assert rows[0]["source"] == "ckpt1.pth" and rows[0]["sha256"] == sha(1)[:12]


def test_history_rows_tie_marks_the_first():
    rows = history_rows([entry(1, step=1, nnk=70.0), entry(2, step=2, nnk=70.0)])
    assert [r["best"] for r in rows] == ["nnk", ""]


# -- what counts as a history ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [None, b"", HISTORY_MARKER + b"1", line(entry(1)).encode(), b'{"schema_version": 1, "sha256": "12'],
    ids=["absent", "empty", "marker", "record", "torn-first-line"],
)
def test_a_history_is_absent_empty_or_starts_with_the_marker(tmp_path, content):
    p = tmp_path / "h.jsonl"
    if content is not None:
        p.write_bytes(content)
    check_is_history(p)  # no error
    assert sorted(x.name for x in tmp_path.iterdir()) == ([] if content is None else ["h.jsonl"])


@pytest.mark.parametrize(
    "content, what",
    [
        (b"\x89HDF\r\n\x1a\n\x00\x00", " (it is an HDF5 file: a feature store?)"),
        (b"step,top1\n1,70\n", ""),
        (b'{"sha256": "ab", "schema_version": 1}\n', ""),  # JSON, but not as nnkcli writes a line
        (b" " + HISTORY_MARKER, ""),
    ],
)
def test_anything_else_is_refused_and_left_as_it_is(tmp_path, content, what):
    p = tmp_path / "h.jsonl"
    p.write_bytes(content)
    with pytest.raises(HistoryError) as info:
        check_is_history(p)
    assert info.value.message == (
        f"{p} is not an nnkcli history{what}: its first line is not a history record; it was left as it is"
    )
    with pytest.raises(HistoryError):
        read_history(p)
    assert p.read_bytes() == content and sorted(x.name for x in tmp_path.iterdir()) == ["h.jsonl"]


def test_every_line_nnkcli_writes_starts_with_the_marker():
    assert encode_entry(entry(1)).startswith(HISTORY_MARKER)


def test_malformed_lines_are_summarised_in_one_line(tmp_path):
    p = tmp_path / "h.jsonl"
    append_entry(p, entry(1))
    with open(p, "ab") as fh:
        fh.write(b"not json\n\xff\xfe\n")
    hist = read_history(p)
    assert hist.malformed_summary() == (
        f"h.jsonl: 2 malformed lines skipped (first: line 2: not valid JSON: Expecting value (column 1)); "
        f"'nnk history {p} --format json' lists them"
    )
    assert parse_history([line(entry(1))]).malformed_summary() is None


def test_reading_creates_no_lock_file(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(line(entry(1)).encode())
    assert len(read_history(p).entries) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["h.jsonl"]
