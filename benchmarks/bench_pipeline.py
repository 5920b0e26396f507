"""End-to-end cost of NNK versus kNN, and of a sweep versus one classify.

Builds a seeded synthetic store (default 200,000 x 384 float32 train rows, a mixture
of 100 classes, and 10,000 queries), saves a flat index, then runs the real CLI in
subprocesses and reports wall time and peak RSS of each run, measured in this run:

    classify --k 50  --method knn        (baseline for the NNK ratio)
    classify --k 50  --method nnk        target: <= 1.5x the kNN run
    classify --k 200 --method both       (baseline for the sweep ratio)
    sweep --k 10..200 --method both      target: <= 2.5x the classify --k 200 run

Usage:
    python benchmarks/bench_pipeline.py            # the issue's sizes (~5 min on 2 cores)
    python benchmarks/bench_pipeline.py --quick    # 20,000 x 128, 2,000 queries (~20 s)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_store(path: Path, n_train: int, n_query: int, dim: int, n_classes: int, seed: int) -> None:
    """A mixture of ``n_classes`` classes on a curved 32-dimensional manifold in ``dim`` dimensions.

    Each class has 4 Gaussian modes in a 32-d latent space (classes overlap there),
    mapped to ``dim`` dimensions by a random two-layer tanh map, plus weak isotropic
    noise. Like self-supervised features, neighbourhoods are low-dimensional; plain
    isotropic high-dimensional noise would instead make all neighbours nearly
    orthogonal, which no real feature extractor produces (and which makes NNK keep
    most neighbours instead of the ~10-25 it keeps on real features).
    """
    from nnkcli.storage.store import write_split

    latent = 32
    rng = np.random.default_rng(seed)
    modes = (rng.normal(size=(n_classes, 1, latent)) + 0.5 * rng.normal(size=(n_classes, 4, latent))).astype(np.float32)
    w1 = rng.normal(size=(latent, 2 * latent)).astype(np.float32) / np.sqrt(latent)
    w2 = rng.normal(size=(2 * latent, dim)).astype(np.float32) / np.sqrt(2 * latent)

    def sample(n):
        y = rng.integers(0, n_classes, n)
        m = rng.integers(0, 4, n)
        h = modes[y, m] + 1.2 * rng.normal(size=(n, latent)).astype(np.float32)
        x = np.tanh(h @ w1) @ w2 + 0.1 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
        return x.astype(np.float32), y

    xt, yt = sample(n_train)
    xq, yq = sample(n_query)
    write_split(path, "train", xt, yt, source="synthetic benchmark mixture (32-d manifold)")
    write_split(path, "val", xq, yq, source="synthetic benchmark mixture (32-d manifold)")


def run_cli(args: list[str]) -> dict:
    """Run ``python -m nnkcli ARGS --format json``; wall seconds, peak RSS (MiB), parsed output."""
    cmd = [sys.executable, "-m", "nnkcli", *args, "--format", "json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "doc": json.loads(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-query", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    a = ap.parse_args()
    n_train = a.n_train or (20_000 if a.quick else 200_000)
    n_query = a.n_query or (2_000 if a.quick else 10_000)
    dim = a.dim or (128 if a.quick else 384)

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"synthetic-{n_train}x{dim}-{a.seed}.h5"
        if not store.exists():
            t0 = time.perf_counter()
            # in a child process: a child's peak RSS starts at its parent's at fork time,
            # so this process must never hold the synthetic arrays itself
            ctx = multiprocessing.get_context("spawn")
            maker = ctx.Process(target=make_store, args=(store, n_train, n_query, dim, a.classes, a.seed))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the synthetic store failed")
            print(f"made {store.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        index = run_cli(["index", str(store)])
        runs = {
            "classify k=50 knn": ["classify", str(store), "--k", "50", "--method", "knn"],
            "classify k=50 nnk": ["classify", str(store), "--k", "50", "--method", "nnk"],
            "classify k=200 both": ["classify", str(store), "--k", "200", "--method", "both"],
            "sweep k=10..200 both": ["sweep", str(store), "--k", "10..200", "--method", "both"],
        }
        results = {}
        for name, args in runs.items():
            r = run_cli(args)
            results[name] = r
            print(f"  {name:<22} {r['wall_s']:7.2f}s  {r['peak_rss_mib']:8.0f} MiB", file=sys.stderr)

    def top1(name, method, k=None):
        doc = results[name]["doc"]
        rows = [x for x in doc["results"] if x["method"] == method and (k is None or x["k"] == k)]
        return max(x["top1"] for x in rows)

    nnk_ratio = results["classify k=50 nnk"]["wall_s"] / results["classify k=50 knn"]["wall_s"]
    sweep_ratio = results["sweep k=10..200 both"]["wall_s"] / results["classify k=200 both"]["wall_s"]
    print(f"\nsynthetic store: {n_train:,} x {dim} train, {n_query:,} queries, {a.classes} classes; "
          f"flat index built in {index['wall_s']:.1f}s")
    print(f"{'run':<24}{'wall s':>9}{'peak RSS MiB':>14}{'nnk top-1 %':>13}{'knn top-1 %':>13}")
    for name, r in results.items():
        cells = []
        for method in ("nnk", "knn"):
            try:
                cells.append(f"{top1(name, method):>13.2f}")
            except ValueError:  # the run did not include this method
                cells.append(f"{'-':>13}")
        print(f"{name:<24}{r['wall_s']:>9.2f}{r['peak_rss_mib']:>14.0f}{''.join(cells)}")
    print(f"\nNNK / kNN at k=50:            {nnk_ratio:.2f}x   (target <= 1.5x)  "
          f"{'PASS' if nnk_ratio <= 1.5 else 'FAIL'}")
    print(f"sweep 10..200 / classify 200: {sweep_ratio:.2f}x   (target <= 2.5x)  "
          f"{'PASS' if sweep_ratio <= 2.5 else 'FAIL'}")
    if a.json:
        a.json.write_text(json.dumps({
            "n_train": n_train, "n_query": n_query, "dim": dim, "nnk_over_knn": nnk_ratio,
            "sweep_over_classify": sweep_ratio,
            "runs": {k: {"wall_s": v["wall_s"], "peak_rss_mib": v["peak_rss_mib"]} for k, v in results.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
