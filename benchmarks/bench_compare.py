"""Time and memory of ``nnk compare A.h5 B.h5`` on two prediction files of 1,000,000 queries.

Writes two seeded prediction files (the layout of ``classify --out``: labels, sample ids,
per method the class scores and the top-5 classes; 10 classes, B right on ~1 % more
queries than A), then runs the real CLI in a child process and reports its wall time
and peak RSS. Baselines measured in the same run, in the same way:

- ``nnk compare --help``: the interpreter and imports alone (the floor of any run);
- a naive in-memory comparison: both files' labels, ids and top-5 loaded whole with
  numpy, then the same counts (what reading in blocks avoids).

Each is run ``--repeat`` times interleaved; the minimum is reported.

Usage:
    python benchmarks/bench_compare.py                   # 1,000,000 queries x 10 classes
    python benchmarks/bench_compare.py --queries 100000  # a few seconds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nnkcli.storage.array_files import ArrayFileWriter

N_CLASSES = 10


def write_predictions(path: Path, labels: np.ndarray, right: np.ndarray, seed: int) -> None:
    """A prediction file whose top-1 is the label where ``right``, another class elsewhere."""
    n = labels.size
    rng = np.random.default_rng(seed)
    block = 65_536
    with ArrayFileWriter(path, kind="predictions") as out:
        out.create("labels", (n,), np.int64)
        out.create("ids", (n,), "S12")
        for method in ("nnk", "knn"):
            out.create(f"{method}/scores", (n, N_CLASSES), np.float32)
            out.create(f"{method}/top5", (n, 5), np.int64)
        for start in range(0, n, block):
            stop = min(n, start + block)
            y = labels[start:stop]
            out.write("labels", start, y)
            out.write("ids", start, np.array([f"img{i:09d}".encode() for i in range(start, stop)]))
            for method in ("nnk", "knn"):
                scores = rng.random((stop - start, N_CLASSES), dtype=np.float32)
                wrong = (y + rng.integers(1, N_CLASSES, size=y.size)) % N_CLASSES
                top1 = np.where(right[start:stop], y, wrong)
                scores[np.arange(y.size), top1] = 2.0  # top-1 first, the rest by score
                top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
                out.write(f"{method}/scores", start, scores)
                out.write(f"{method}/top5", start, top)
        out.set_attrs(
            {
                "nnk_format": "predictions",
                "format_version": 1,
                "k": 50,
                "methods": ["nnk", "knn"],
                "class_names": [f"class{c}" for c in range(N_CLASSES)],
            }
        )


NAIVE = """
import sys, h5py, numpy as np
from nnkcli.numerics import stats
fa, fb = (h5py.File(p, "r") for p in sys.argv[1:3])
ya, yb = fa["labels"][:], fb["labels"][:]
assert (ya == yb).all() and (fa["ids"][:] == fb["ids"][:]).all()
ta, tb = fa["nnk/top5"][:], fb["nnk/top5"][:]
ha, hb = ta[:, 0] == ya, tb[:, 0] == ya
a_only, b_only = int((ha & ~hb).sum()), int((hb & ~ha).sum())
print(stats.mcnemar_exact(a_only, b_only), stats.paired_bootstrap_difference(a_only, b_only, ya.size))
"""


def timed(args: list[str]) -> dict:
    """Run a Python child; wall seconds and its own peak RSS (VmHWM) in MiB."""
    code = (
        "import sys, time, runpy\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    if sys.argv[1] == '--naive':\n"
        "        sys.argv = sys.argv[1:]\n"
        f"        exec(compile({NAIVE!r}, 'naive', 'exec'))\n"
        "    else:\n"
        "        from nnkcli.cli import main\n"
        "        main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(time.perf_counter() - t, hwm, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args} failed:\n{proc.stderr}")
    seconds, hwm_kib = proc.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(seconds), "peak_rss_mib": int(hwm_kib) / 1024, "stdout": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    n = args.queries
    labels = rng.integers(0, N_CLASSES, size=n)
    right_a = rng.random(n) < 0.80
    right_b = np.where(rng.random(n) < 0.95, right_a, rng.random(n) < 0.90)  # paired, B a little better
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = Path(tmp) / "a.h5", Path(tmp) / "b.h5"
        write_predictions(pa, labels, right_a, 1)
        write_predictions(pb, labels, right_b, 2)
        size_mib = (pa.stat().st_size + pb.stat().st_size) / 2**20
        runs = {"compare": [], "startup": [], "naive": []}
        for _ in range(args.repeat):  # interleaved, so machine noise hits all three alike
            runs["compare"].append(timed(["compare", str(pa), str(pb)]))
            runs["startup"].append(timed(["compare", "--help"]))
            runs["naive"].append(timed(["--naive", str(pa), str(pb)]))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        peak = {k: min(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    print(
        f"nnk compare: two prediction files of {n:,} queries x {N_CLASSES} classes ({size_mib:,.0f} MiB on disk), "
        f"best of {args.repeat}"
    )
    print(f"{'run':<34}{'wall s':>8}{'peak RSS MiB':>14}")
    for name, label in (
        ("compare", "nnk compare A.h5 B.h5"),
        ("startup", "nnk compare --help (imports)"),
        ("naive", "naive: load both files whole"),
    ):
        print(f"{label:<34}{best[name]['seconds']:>8.2f}{peak[name]:>14.0f}")
    print(
        f"compare above the import floor: {best['compare']['seconds'] - best['startup']['seconds']:.2f} s, "
        f"{peak['compare'] - peak['startup']:.0f} MiB; naive loading needs "
        f"{peak['naive'] / peak['compare']:.1f}x the peak memory"
    )
    print("verdict:", best["compare"]["stdout"].strip().splitlines()[-1])
    if args.json:
        from _report import write_json

        write_json(
            args.json,
            "bench_compare",
            {
                "n_queries": n,
                "size_mib": size_mib,
                "repeats": args.repeat,
                "seconds": {k: r["seconds"] for k, r in best.items()},
                "peak_rss_mib": peak,
            },
        )


if __name__ == "__main__":
    main()
