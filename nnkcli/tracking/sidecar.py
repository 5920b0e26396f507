"""Per-query top-1 correctness of history entries, kept beside the history (``HISTORY.d/``).

A paired test (McNemar) of two history entries needs to know, query by query, which
ones each got right. That is one bit per query and method: 1.28 M queries take
160 KB, compressed less. It does not belong inside the JSON line (lines stay small
and readable), so each entry gets one file in the folder ``<history>.d/``, written
atomically *before* its line is appended; the line names the file and its sha256. A
run killed in between leaves an unreferenced file (ignored, and harmless), never a
line that points to a missing or torn file; a file whose sha256 differs from the
line's is refused.

File layout: the line ``NNKCLI-HITS 1``, one JSON line (the query split's identity
``n``, ``labels_sha256``, ``ids_sha256``; per method ``k``, ``n`` and the byte range of
its bits), then per method ``zlib(np.packbits(hits))``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.atomic import atomic_write_bytes

MAGIC = b"NNKCLI-HITS 1\n"


def sidecar_dir(history_path: str | os.PathLike) -> Path:
    """``runs/history.jsonl`` -> ``runs/history.jsonl.d``."""
    p = Path(history_path)
    return p.with_name(p.name + ".d")


def query_identity(labels: np.ndarray, ids=None) -> dict:
    """What makes two runs' queries the same: their number, labels and sample ids (hashed)."""
    labels = np.ascontiguousarray(np.asarray(labels, dtype="<i8"))
    out = {"n": int(labels.size), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(), "ids_sha256": None}
    if ids is not None:
        digest = hashlib.sha256()
        for i in ids:
            digest.update(str(i).encode("utf-8") + b"\0")
        out["ids_sha256"] = digest.hexdigest()
    return out


@dataclass(frozen=True)
class Hits:
    """One entry's per-query top-1 correctness, per method, over its labelled queries."""

    identity: dict
    by_method: dict  # method -> (k, bool ndarray (n_labelled,))

    def paired_with(self, other: Hits) -> str | None:
        """None when the two entries classified the same queries, else why not."""
        a, b = self.identity, other.identity
        if a.get("n") != b.get("n"):
            return f"different numbers of queries ({a.get('n')} and {b.get('n')})"
        if a.get("labels_sha256") != b.get("labels_sha256"):
            return "different query labels"
        if a.get("ids_sha256") and b.get("ids_sha256") and a["ids_sha256"] != b["ids_sha256"]:
            return "different sample ids"
        return None


def encode(hits: Hits) -> bytes:
    header: dict = {"identity": hits.identity, "methods": {}}
    blobs = []
    offset = 0
    for method, (k, bits) in sorted(hits.by_method.items()):
        bits = np.asarray(bits, dtype=bool)
        blob = zlib.compress(np.packbits(bits).tobytes(), 6)
        header["methods"][method] = {"k": int(k), "n": int(bits.size), "offset": offset, "length": len(blob)}
        blobs.append(blob)
        offset += len(blob)
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + b"".join(blobs)


def decode(data: bytes, what: str = "hits file") -> Hits:
    if not data.startswith(MAGIC):
        raise InputError(f"{what} is not an nnkcli hits file")
    try:
        end = data.index(b"\n", len(MAGIC))
        header = json.loads(data[len(MAGIC) : end])
        body = data[end + 1 :]
        by_method = {}
        for method, m in header["methods"].items():
            raw = zlib.decompress(body[m["offset"] : m["offset"] + m["length"]])
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=int(m["n"])).astype(bool)
            by_method[method] = (int(m["k"]), bits)
        return Hits(header["identity"], by_method)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise InputError(f"{what} is damaged ({exc})") from None


def write(history_path: str | os.PathLike, name: str, hits: Hits) -> dict:
    """Write ``HISTORY.d/<name>.hits`` atomically; returns the reference the line records."""
    folder = sidecar_dir(history_path)
    folder.mkdir(exist_ok=True)
    data = encode(hits)
    path = folder / f"{name}.hits"
    atomic_write_bytes(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}


def read(history_path: str | os.PathLike, ref: dict | None) -> Hits | None:
    """The hits a line refers to; None when the line has none (older lines), an error when damaged."""
    if not isinstance(ref, dict) or not isinstance(ref.get("file"), str):
        return None
    name = Path(ref["file"]).name  # never outside the folder
    path = sidecar_dir(history_path) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"the per-query results {path} named by the history are missing",
            hint="re-evaluate that source with --force to record them again",
        ) from None
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise InputError(
            f"the per-query results {path} do not match the history's sha256",
            hint="re-evaluate that source with --force to record them again",
        )
    return decode(data, str(path))
