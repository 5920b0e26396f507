"""A reader of offline W&B runs (``WANDB_MODE=offline``: ``wandb/offline-run-*/run-<id>.wandb``), for tests.

The ``.wandb`` file is wandb's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1,
version 0) then LevelDB-log framing (32 KiB blocks; each record: CRC-32 of its type byte
and data, length, type FULL/FIRST/MIDDLE/LAST) around ``wandb_internal_pb2.Record``
messages. wandb 0.19+ ships no Python reader of it (its core is in Go), so the framing is
read here, checking every checksum; the records are parsed with wandb's own protobuf.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """The ``Record`` messages of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, hex(magic), version)
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert len(chunk) == length, f"torn record at byte {pos}"
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad checksum at byte {pos}"
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@dataclass
class OfflineRun:
    """What one offline run wrote: its id, name, config, history rows and final summary."""

    id: str
    name: str
    project: str
    group: str
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # [{key: value, "_step": n}, ...]
    summary: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> OfflineRun:
    run = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(r.run_id, r.display_name, r.project, r.run_group)
            run.config = {u.key: json.loads(u.value_json) for u in r.config.update}
        elif run is not None and kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif run is not None and kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif run is not None and kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif run is not None and kind == "files":
            run.files += [f.path for f in record.files.files]
    assert run is not None, f"no run record in {path}"
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (WANDB_DIR), oldest first (a resumed id appears again)."""
    paths = sorted(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [read_run(p) for p in paths]
