"""Sharded train indexes: M index files over contiguous row ranges, tied together by one manifest.

``nnk index STORE --shards M`` (or ``--max-memory 8G``, which picks M) writes M
ordinary index files (see :mod:`nnkcli.index`), each over rows ``start:stop`` of the
train split and each with its own fingerprint, then a small manifest at the path
where the single index would be (``<stem>.<split>.faiss``)::

    NNKCLI-SHARDS 1\\n
    {"fingerprint": {...}, "index": {...}, "build": "9f3c...", "shards": [{"file": ..., "start": 0, ...}]}\\n

The manifest is written last and atomically, and the shard files of a build carry
the build's token in their names, so a build that dies half-way leaves the previous
manifest and its shards untouched (the dead build's files are removed by the next
one). Readers map flat shards (the page cache holds their vectors, as much as fits) and load
other shards one at a time (:mod:`nnkcli.evaluation.sharded_search`).

This module never imports faiss (``nnkcli.index`` does the building and loading).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

from nnkcli.errors import IndexFileError, InputError, StaleIndexError
from nnkcli.storage.atomic import TMP_MARKER, atomic_output, remove_dead_temps

logger = logging.getLogger("nnkcli")

MAGIC = b"NNKCLI-SHARDS 1\n"
MAX_SHARDS = 1024
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class ShardEntry(TypedDict):
    """One shard of a manifest: its file (beside the manifest) and its rows ``start:stop`` of the split."""

    file: str
    start: int
    stop: int
    content_sha256: str


def parse_size(text: str) -> int:
    """``"8G"`` -> 8 * 2**30 bytes (units K, M, G, T are powers of 1024; a plain number is bytes)."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"bad memory size {text!r}", hint="e.g. 8G, 512M or 2.5G (powers of 1024)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError  # pragma: no cover


class SplitRange:
    """Rows ``start:stop`` of a store split, with the methods :func:`nnkcli.index.build_index` reads.

    Its ``content_sha256`` names the parent split's content and the range, so a shard's
    fingerprint changes whenever the split's data or the shard's rows do.
    """

    def __init__(self, split, start: int, stop: int):
        if not 0 <= start < stop <= split.n:
            raise InputError(f"bad row range {start}:{stop} of split '{split.name}' ({split.n} rows)")
        self.parent, self.start, self.stop = split, int(start), int(stop)
        self.name = split.name
        self.n = self.stop - self.start
        self.dim = int(split.dim)
        self.content_sha256 = range_sha256(split.content_sha256, self.start, self.stop)

    def read(self, start: int = 0, stop: int | None = None):
        stop = self.n if stop is None else min(stop, self.n)
        return self.parent.read(self.start + start, self.start + stop)

    def iter_chunks(self, chunk_rows: int):
        for s in range(0, self.n, chunk_rows):
            yield s, self.read(s, s + chunk_rows)


def range_sha256(split_sha256: str, start: int, stop: int) -> str:
    return hashlib.sha256(f"{split_sha256}:rows:{start}:{stop}".encode()).hexdigest()


def shard_bounds(n: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous ranges of sizes differing by at most one row (the first ``n % M`` one row longer)."""
    if not 1 <= n_shards <= n:
        raise InputError(f"--shards must be between 1 and the number of rows ({n}), got {n_shards}")
    base, extra = divmod(n, n_shards)
    bounds, start = [], 0
    for i in range(n_shards):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def bytes_per_row(dim: int, params) -> int:
    """Index memory per train row: float32 vectors, plus ids (ivf) or graph links (hnsw)."""
    extra = {"flat": 0, "ivf": 8, "hnsw": 8 * params.hnsw_m + 8}[params.index_type]
    return 4 * dim + extra


def shards_for_memory(n: int, dim: int, params, max_memory: int, chunk_bytes: int) -> int:
    """Smallest shard count whose largest shard plus one query chunk fits in ``max_memory`` bytes."""
    per_row = bytes_per_row(dim, params)
    room = max_memory - chunk_bytes
    fewest = max(1, math.ceil(n / MAX_SHARDS))  # rows of the largest shard at MAX_SHARDS shards
    need = chunk_bytes + min(n, fewest) * per_row
    if room < min(n, fewest) * per_row:
        raise InputError(
            f"--max-memory {format_size(max_memory)} cannot hold one index shard plus a query chunk: the chunk "
            f"needs {format_size(chunk_bytes)} and the smallest shard ({min(n, fewest)} rows of {per_row} bytes) "
            f"{format_size(min(n, fewest) * per_row)}",
            hint=f"give --max-memory {format_size(need)} or more (the whole index in one piece needs "
            f"{format_size(chunk_bytes + n * per_row)})",
        )
    return max(1, min(n, math.ceil(n / max(1, room // per_row))))


def is_manifest(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def shard_path(manifest: Path, build: str, i: int, n_shards: int) -> Path:
    return manifest.with_name(f"{manifest.stem}.{build}.shard-{i + 1}-of-{n_shards}{manifest.suffix}")


def _shard_name(manifest: Path) -> str:
    """The regular expression of the names of ``manifest``'s shard files, of any build."""
    return re.escape(manifest.stem) + r"\.[0-9a-f]{8}\.shard-\d+-of-\d+" + re.escape(manifest.suffix)


def _shard_files(manifest: Path) -> list[Path]:
    pattern = re.compile(_shard_name(manifest) + "$")
    return [p for p in manifest.parent.iterdir() if pattern.match(p.name)] if manifest.parent.is_dir() else []


def remove_dead_shard_temps(manifest: Path) -> None:
    """Delete the temporary files that killed builds left while writing a shard of ``manifest``.

    A shard's name carries its build's token, so the next build's atomic writes never
    meet the dead build's ``.<shard>.tmp-<pid>-<token>``; those of writers still alive stay.
    """
    pattern = re.compile(r"\.(" + _shard_name(manifest) + ")" + re.escape(TMP_MARKER))
    if not manifest.parent.is_dir():
        return
    for path in manifest.parent.iterdir():
        m = pattern.match(path.name)
        if m:
            remove_dead_temps(manifest.with_name(m.group(1)))


def write_manifest(path: Path, fingerprint, params, build: str, shards: list[ShardEntry]) -> None:
    doc = {"fingerprint": asdict(fingerprint), "index": asdict(params), "build": build, "shards": shards}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(json.dumps(doc, sort_keys=True).encode("utf-8") + b"\n")


class Manifest:
    """A read manifest: the split's fingerprint, the index parameters, and the shards' files and rows."""

    def __init__(self, path: str | os.PathLike):
        from nnkcli.index import Fingerprint, IndexParams

        self.path = Path(path)
        hint = "rebuild it with 'nnk index STORE --shards M'"
        try:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a shard manifest")
                doc = json.loads(f.readline())
            self.fingerprint = Fingerprint(**doc["fingerprint"])
            self.params = IndexParams(**doc["index"])
            self.build = str(doc["build"])
            self.shards: list[ShardEntry] = [
                {
                    "file": str(s["file"]),
                    "start": int(s["start"]),
                    "stop": int(s["stop"]),
                    "content_sha256": str(s["content_sha256"]),
                }
                for s in doc["shards"]
            ]
        except FileNotFoundError:
            raise IndexFileError(f"index file not found: {self.path}", hint="build it with 'nnk index STORE'") from None
        except OSError as exc:
            raise IndexFileError(f"cannot read shard manifest {self.path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise IndexFileError(f"{self.path} is not a valid shard manifest (or it is damaged)", hint=hint) from None
        expect = 0
        for s in self.shards:
            if s["start"] != expect or s["stop"] <= s["start"]:
                raise IndexFileError(f"shard manifest {self.path} does not cover the rows contiguously", hint=hint)
            expect = s["stop"]
        if expect != self.fingerprint.n or not self.shards:
            raise IndexFileError(f"shard manifest {self.path} covers {expect} of {self.fingerprint.n} rows", hint=hint)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def file(self, i: int) -> Path:
        return self.path.parent / self.shards[i]["file"]

    def label(self, i: int) -> str:
        s = self.shards[i]
        return f"shard {i + 1} of {self.n_shards} ({self.file(i)}, rows {s['start']}:{s['stop']})"

    def check_fresh(self, split, *, store_path: str | os.PathLike = "") -> None:
        """The manifest must describe the split's current data, and every shard file must exist."""
        from nnkcli.index import Fingerprint, stale_error

        current = Fingerprint.of_split(split, store_path)
        if not self.fingerprint.matches(current):
            raise stale_error(
                f"sharded index {self.path}", self.fingerprint, split.name, current, "nnk index STORE --shards M"
            )
        for i in range(self.n_shards):
            if not self.file(i).is_file():
                raise IndexFileError(
                    f"{self.label(i)} is missing", hint="rerun 'nnk index STORE --shards M' (or pass --rebuild-index)"
                )
        # each shard's vectors are compared with a sample of its rows of the split when it is first loaded
        self._sample_of = split
        self._sampled: set[int] = set()

    def load(self, i: int, *, mapped: bool = False):
        """Load shard ``i`` (``mapped``: its vectors memory-mapped, not read in); check it holds the manifest's rows."""
        from nnkcli.index import Fingerprint, load_index

        s = self.shards[i]
        if not self.file(i).is_file():
            raise IndexFileError(f"{self.label(i)} is missing", hint="rerun 'nnk index STORE --shards M'")
        loaded = load_index(self.file(i), mapped=mapped)
        fp = loaded.fingerprint
        want = Fingerprint(
            split=self.fingerprint.split,
            n=s["stop"] - s["start"],
            dim=self.fingerprint.dim,
            content_sha256=s["content_sha256"],
        )
        if not fp.matches(want) or s["content_sha256"] != range_sha256(
            self.fingerprint.content_sha256, s["start"], s["stop"]
        ):
            raise StaleIndexError(
                f"{self.label(i)} is stale: it holds {fp.n} rows of content {fp.content_sha256[:12]}, not the "
                f"manifest's rows",
                hint="rerun 'nnk index STORE --shards M' (or pass --rebuild-index)",
            )
        split = getattr(self, "_sample_of", None)
        if split is not None and i not in self._sampled:
            from nnkcli.index import check_sample

            # a split edited in place keeps its recorded content hash: the shard's own rows must match
            check_sample(
                loaded,
                SplitRange(split, s["start"], s["stop"]),
                command="nnk index STORE --shards M",
                first_row=s["start"],
            )
            self._sampled.add(i)
        return loaded

    def check_samples(self) -> None:
        """Load every shard now and compare it with a sample of its rows (``check_fresh`` first).

        Normally each shard is compared when the search first loads it; ``--rebuild-index``
        checks them all before the run, so that a split edited in place is rebuilt, not refused.
        """
        for i in range(self.n_shards):
            self.load(i)


def build_sharded(
    split,
    out: str | os.PathLike,
    n_shards: int,
    params,
    *,
    store_path: str | os.PathLike = "",
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Build and save ``n_shards`` shard files of ``split`` and commit their manifest at ``out``.

    Holds one shard in memory at a time. On any failure the files of this build are
    removed and an earlier manifest at ``out`` (with its shards) is kept.
    """
    from nnkcli.index import Fingerprint, build_index, save_index

    out = Path(out)
    params.validate()
    remove_dead_shard_temps(out)  # a killed build's half-written shard, before this one needs the space
    bounds = shard_bounds(int(split.n), n_shards)
    build = secrets.token_hex(4)
    written: list[Path] = []
    entries: list[ShardEntry] = []
    try:
        for i, (start, stop) in enumerate(bounds):
            view = SplitRange(split, start, stop)
            built = build_index(view, params, store_path=store_path, progress=progress)
            path = shard_path(out, build, i, n_shards)
            written.append(path)
            save_index(built, path)
            entries.append({"file": path.name, "start": start, "stop": stop, "content_sha256": view.content_sha256})
            del built
        write_manifest(out, Fingerprint.of_split(split, store_path), params, build, entries)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    # the new manifest is in place: drop the old build's shards and any dead build's leftovers
    remove_unreferenced(out, keep={e["file"] for e in entries})
    return Manifest(out)


def remove_unreferenced(out: str | os.PathLike, keep: Collection[str] = frozenset()) -> None:
    """Delete shard files beside ``out`` named after it that are not in ``keep`` (old or dead builds)."""
    for path in _shard_files(Path(out)):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def index_store_sharded(
    store_path: str | os.PathLike,
    *,
    split: str = "train",
    out: str | os.PathLike | None = None,
    params=None,
    n_shards: int | None = None,
    max_memory: int | None = None,
    chunk_bytes: int = 512 * 2**20,
    threads: int | None = None,
    progress_factory: Callable | None = None,
) -> dict:
    """``nnk index --shards M`` / ``--max-memory SIZE``: build the shards and their manifest; a summary dict."""
    from nnkcli.index import IndexParams, default_index_path, set_threads
    from nnkcli.storage.store import FeatureStore

    params = (params or IndexParams()).validate()
    if (n_shards is None) == (max_memory is None):
        raise InputError("give exactly one of --shards and --max-memory")
    set_threads(threads)
    out = Path(out) if out is not None else default_index_path(store_path, split)
    if not out.parent.is_dir():
        raise InputError(f"directory of --out does not exist: {out.parent}")
    t0 = time.perf_counter()
    with FeatureStore(store_path) as store:
        sp = store.split(split)
        if sp.n < 1:
            raise InputError(f"split '{split}' is empty; nothing to index")
        if n_shards is None:
            if max_memory is None:  # not reached: exactly one of the two was checked above
                raise InputError("give exactly one of --shards and --max-memory")
            n_shards = shards_for_memory(int(sp.n), int(sp.dim), params, max_memory, chunk_bytes)
        if progress_factory is not None:
            with progress_factory(sp.n, "building the index") as advance:
                manifest = build_sharded(sp, out, n_shards, params, store_path=store_path, progress=advance)
        else:
            manifest = build_sharded(sp, out, n_shards, params, store_path=store_path)
    build_s = time.perf_counter() - t0
    logger.info(f"indexed {manifest.fingerprint.n} rows of '{split}' into {n_shards} shards, manifest {out}")
    sizes = [manifest.file(i).stat().st_size for i in range(manifest.n_shards)]
    return {
        "index": str(out),
        "store": str(store_path),
        "split": split,
        "n": manifest.fingerprint.n,
        "dim": manifest.fingerprint.dim,
        "type": manifest.params.index_type,
        "params": asdict(manifest.params),
        "content_sha256": manifest.fingerprint.content_sha256,
        "shards": manifest.n_shards,
        "shard_rows": [s["stop"] - s["start"] for s in manifest.shards],
        "max_memory": max_memory,
        "bytes": sum(sizes),
        "largest_shard_bytes": max(sizes),
        "build_s": round(build_s, 3),
    }
