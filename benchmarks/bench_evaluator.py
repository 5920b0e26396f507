"""The in-memory evaluator (``nnkcli.evaluate_features``) next to ``nnk sweep`` on the same data.

Builds seeded synthetic features (default 50,000 x 512 float32 train rows, 100 classes,
10,000 queries; the curved-manifold mixture of ``bench_pipeline.py``), writes them to a
store, and times, interleaved and repeated (the minimum of each is reported):

    evaluate_features(train, labels, queries, labels, k="10..200")   in memory, in this process
    sweep(STORE, k="10..200")                                        the library on the store
    nnk sweep STORE --k 10..200                                      the CLI, in a subprocess
    write_split(train) + write_split(val)                            what the store path adds per epoch

All three sweeps build the same flat index of the train rows (no saved index), score the
same queries, and must give the same accuracies (checked). The ratios printed are against
the in-memory run of the same repetition round; the target is evaluate_features <= nnk sweep.

Usage:
    python benchmarks/bench_evaluator.py                  # the issue's sizes
    python benchmarks/bench_evaluator.py --quick          # 10,000 x 128, 2,000 queries
    python benchmarks/bench_evaluator.py --queries 2000   # the issue's train set, fewer queries
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_json
from bench_pipeline import make_store


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def write_store(path, xt, yt, xq, yq) -> None:
    from nnkcli import write_split

    write_split(path, "train", xt, yt, source="bench")
    write_split(path, "val", xq, yq, source="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", default="10..200")
    ap.add_argument("--queries", type=int, default=None, help="number of queries (default 10,000; --quick 2,000)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    args = ap.parse_args()
    n_train, n_query, dim = (10_000, 2_000, 128) if args.quick else (50_000, 10_000, 512)
    n_query = args.queries or n_query

    from nnkcli import evaluate_features, parse_k_spec, sweep
    from nnkcli.storage.store import FeatureStore

    k_values = parse_k_spec(args.k)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.h5"
        make_store(store, n_train, n_query, dim, n_classes=100, seed=0)
        with FeatureStore(store) as fs:
            xt, yt = fs.split("train").read(), np.asarray(fs.split("train").labels)
            xq, yq = fs.split("val").read(), np.asarray(fs.split("val").labels)
        print(
            f"{n_train} x {dim} train rows, {n_query} queries, k = {args.k} ({len(k_values)} values); "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"
        )
        cli = [sys.executable, "-m", "nnkcli", "sweep", str(store), "--k", args.k, "--format", "json", "-q"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        rows = []
        runs = {
            "memory": lambda: evaluate_features(xt, yt, xq, yq, k=k_values).to_dict(),
            "library": lambda: sweep(store, k=k_values).to_dict(),
            "cli": lambda: json.loads(subprocess.run(cli, capture_output=True, text=True, env=env, check=True).stdout),
        }
        for round_ in range(args.repeat):
            order = list(runs)[round_ % 3 :] + list(runs)[: round_ % 3]  # rotate: no path always runs first
            times, docs = {}, {}
            for name in order:
                times[name], docs[name] = timed(runs[name])
            t_mem, t_lib, t_cli = times["memory"], times["library"], times["cli"]
            mem, lib, cli_doc = docs["memory"], docs["library"], docs["cli"]
            copy = Path(tmp) / f"copy{round_}.h5"
            t_write, _ = timed(partial(write_store, copy, xt, yt, xq, yq))
            copy.unlink()
            for other in (lib, cli_doc):
                assert [(r["method"], r["k"], r["top1"]) for r in other["results"]] == [
                    (r["method"], r["k"], r["top1"]) for r in mem["results"]
                ], "the sweeps disagree"
            rows.append((t_mem, t_lib, t_cli, t_write))
            print(
                f"round {round_ + 1}: evaluate_features {t_mem:7.2f} s | sweep(store) {t_lib:7.2f} s "
                f"({t_lib / t_mem:.2f}x) | nnk sweep {t_cli:7.2f} s ({t_cli / t_mem:.2f}x) | "
                f"write the store {t_write:6.2f} s | load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        t_mem, t_lib, t_cli, t_write = (min(col) for col in zip(*rows, strict=True))
        best = {m: (b["k"], b["top1"]) for m, b in mem["best"].items()}
        print(
            f"\nminimum of {args.repeat}: evaluate_features {t_mem:.2f} s; sweep(store) {t_lib:.2f} s = "
            f"{t_lib / t_mem:.2f}x; nnk sweep {t_cli:.2f} s = {t_cli / t_mem:.2f}x; "
            f"write + nnk sweep {t_write + t_cli:.2f} s = {(t_write + t_cli) / t_mem:.2f}x"
        )
        print(f"best k: {best}; in-memory timing: {mem['timing']}")
        if args.json:
            write_json(
                args.json,
                "bench_evaluator",
                {
                    "n_train": n_train,
                    "n_query": n_query,
                    "dim": dim,
                    "k": args.k,
                    "repeats": args.repeat,
                    "rounds": [dict(zip(("memory_s", "library_s", "cli_s", "write_s"), r, strict=True)) for r in rows],
                    "memory_s": t_mem,
                    "library_s": t_lib,
                    "cli_s": t_cli,
                    "write_s": t_write,
                    "best": {m: {"k": k, "top1": top1} for m, (k, top1) in best.items()},
                },
            )


if __name__ == "__main__":
    main()
