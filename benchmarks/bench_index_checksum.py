"""What the index payload checksum costs on load: ``load_index`` against a bare faiss read.

Builds a flat index of the requested size (default 1 GiB of vectors: 1,048,576 x 256
float32), saves it with ``save_index`` (CRC-32 in the header), then times, interleaved and
repeated (minimum kept):

* ``baseline``: the same payload read by ``faiss.read_index`` through the same callback
  reader, without the checksum (what loading cost before the checksum existed);
* ``load_index``: the real load (checksum computed while streaming, type and shape checks);

and, for scale, CRC-32 and sha256 over the payload bytes alone (already in memory). The
file is read from the page cache in every timed run (one untimed read first), so the
ratio is the CPU cost of the checksum, not disk speed.

Usage:
    python benchmarks/bench_index_checksum.py            # 1 GiB, ~1 min
    python benchmarks/bench_index_checksum.py --rows 65536   # 64 MiB, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import zlib
from pathlib import Path

import faiss
import numpy as np

from nnkcli.index import Fingerprint, IndexParams, NnkIndex, load_index, save_index


def baseline_read(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for _ in range(3):
            f.readline()
        index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
    elapsed = time.perf_counter() - t0
    del index
    return elapsed


def checked_read(path: Path) -> float:
    t0 = time.perf_counter()
    loaded = load_index(path)
    elapsed = time.perf_counter() - t0
    del loaded
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.faiss"
        index = faiss.IndexFlatIP(args.dim)
        step = 1 << 16
        for start in range(0, args.rows, step):
            block = rng.standard_normal((min(step, args.rows - start), args.dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            index.add(block)
        fp = Fingerprint(split="train", n=args.rows, dim=args.dim, content_sha256="0" * 64)
        save_index(NnkIndex(index=index, fingerprint=fp, params=IndexParams()), path)
        del index
        size = path.stat().st_size
        print(f"index file: {size / 2**30:.2f} GiB ({args.rows} x {args.dim} float32)")
        path.read_bytes()  # into the page cache

        base, checked = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            base.append(baseline_read(path))
            checked.append(checked_read(path))
        payload = path.read_bytes()
        t0 = time.perf_counter()
        zlib.crc32(payload)
        crc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hashlib.sha256(payload).digest()
        sha_s = time.perf_counter() - t0

    b, c = min(base), min(checked)
    print(f"baseline faiss read : {b:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in base)})")
    print(f"load_index (CRC-32) : {c:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in checked)})")
    print(f"ratio               : {c / b:.2f}x   (+{c - b:.2f} s per {size / 2**30:.2f} GiB)")
    print(f"CRC-32 alone        : {crc_s:.2f} s = {size / 2**20 / crc_s:.0f} MiB/s")
    print(f"sha256 alone        : {sha_s:.2f} s = {size / 2**20 / sha_s:.0f} MiB/s (the alternative not taken)")
    if args.json:
        from _report import write_json

        write_json(
            args.json,
            "bench_index_checksum",
            {
                "size_bytes": size,
                "faiss_read_s": base,
                "load_index_s": checked,
                "ratio": c / b,
                "crc32_s": crc_s,
                "sha256_s": sha_s,
            },
        )


if __name__ == "__main__":
    main()
