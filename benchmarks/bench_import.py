"""Memory and speed of ``nnk extract --from big.npy``: the input is streamed, not loaded.

Writes a seeded float32 ``.npy`` of the requested size, then runs the real CLI in a
subprocess and reports its wall time, throughput and peak RSS next to the input size,
and the same for adding a second split to the store just made (which copies the
first split into the new file before replacing it, the price of atomic writes).
The claim checked: peak RSS stays far below the input size (bounded by the 32 MB
blocks, not by n).

Usage:
    python benchmarks/bench_import.py              # 1 GiB input (262,144 x 1,024)
    python benchmarks/bench_import.py --rows 65536 --dim 512   # 128 MiB, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_npy(path: Path, rows: int, dim: int, seed: int) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    block = 16384
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    out.flush()
    del out
    np.save(path.with_name("labels.npy"), np.arange(rows) % 1000)


def run_cli(args: list[str]) -> dict:
    """Run ``nnk`` in a child process; wall seconds and the child's peak RSS in MiB."""
    # VmHWM is this process's own peak (ru_maxrss would include the parent's at fork)
    code = (
        "import sys, time\n"
        "from nnkcli.cli import main\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(time.perf_counter() - t, hwm, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, maxrss_kib = proc.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(seconds), "peak_rss_mib": int(maxrss_kib) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("NNK_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        features = tmp / "features.npy"
        make_npy(features, args.rows, args.dim, args.seed)
        input_mib = features.stat().st_size / 2**20
        store = tmp / "feats.h5"
        first = run_cli(
            [
                "extract",
                str(store),
                "--split",
                "train",
                "--from",
                str(features),
                "--labels",
                str(tmp / "labels.npy"),
                "-q",
            ]
        )
        second = run_cli(["extract", str(store), "--split", "val", "--from", str(features), "-q"])
        baseline = run_cli(["info", str(store), "--format", "json"])  # interpreter + numpy/h5py/rich imports
    report = {
        "input": f"{args.rows} x {args.dim} float32 .npy ({input_mib:.0f} MiB)",
        "nnk_info_rss_mib": round(baseline["peak_rss_mib"], 1),
        "first_split": {
            "seconds": round(first["seconds"], 2),
            "peak_rss_mib": round(first["peak_rss_mib"], 1),
            "mib_per_s": round(input_mib / first["seconds"], 1),
        },
        "second_split": {
            "seconds": round(second["seconds"], 2),
            "peak_rss_mib": round(second["peak_rss_mib"], 1),
            "note": "copies the first split into the new file, then writes the second",
        },
        "peak_rss_over_input": round(first["peak_rss_mib"] / input_mib, 3),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        from _report import write_json

        write_json(args.json, "bench_import", report)


if __name__ == "__main__":
    main()
