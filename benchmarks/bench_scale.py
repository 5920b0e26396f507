"""ImageNet-size evaluation on one machine: wall time and peak RSS, unsharded versus ``--shards 4``.

Builds a seeded synthetic store of 1,281,167 x 384 float16 train rows (ImageNet-1k's train
size) with the low-dimensional structure of ``bench_pipeline.py`` (each class has 4 modes
on a curved 32-d manifold), 1,000 classes and 5,000 queries, written in blocks so that this
script never holds the train matrix. Then it runs the real CLI in subprocesses and reports,
for each run, wall seconds, peak RSS (of that process alone) and the wall time extrapolated
to 50,000 queries (the fixed cost -- start-up, index load or build -- plus the per-query
time measured here times 50,000):

    index                      flat, one file               (baseline)
    index --shards 4           4 shard files + manifest     target: peak RSS <= 40 % of the flat build
    classify --k 20  --method knn     flat / shards 4       target: sharded peak RSS <= 40 %
    classify --k 50  --method nnk     flat / shards 4
    sweep --k 10..200 --method both   flat / shards 4
    ... and with --backend torch --device cuda when torch sees a GPU (--device cpu with --torch-cpu)

Usage:
    python benchmarks/bench_scale.py             # full size: ~1 GB store + 2 GB index, long on 2 cores
    python benchmarks/bench_scale.py --quick     # 10x smaller: 128,117 train rows, 500 queries
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

N_TRAIN = 1_281_167
N_QUERY = 5_000
EXTRAPOLATE_TO = 50_000


def make_store(path: Path, n_train: int, n_query: int, dim: int, n_classes: int, seed: int) -> None:
    """``bench_pipeline.make_store``'s mixture, streamed into float16 splits block by block."""
    from bench_pipeline import manifold_sampler  # this folder is on sys.path when run as a script
    from nnkcli.storage.split_writer import SplitWriter

    sample = manifold_sampler(n_classes, dim, seed)
    names = [f"c{c:04d}" for c in range(n_classes)]
    for split, n in (("train", n_train), ("val", n_query)):
        with SplitWriter(
            path, split, dim=dim, class_names=names, dtype="float16", source="synthetic scale benchmark (32-d manifold)"
        ) as writer:
            for start in range(0, n, 65536):
                x, y = sample(min(65536, n - start))
                writer.append(x, y)


def measured(args: list[str]) -> dict:
    """Run in a fresh child that execs the CLI, so ru_maxrss is that command's alone."""
    cmd = [sys.executable, "-m", "nnkcli", *args, "--format", "json", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err.decode()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "doc": json.loads(out)}


def extrapolate(run: dict, n_query: int) -> float | None:
    """Fixed cost (wall minus the query loop) plus the query loop scaled to 50,000 queries."""
    timing = run["doc"].get("timing") or {}
    loop = timing.get("total_s")
    if loop is None:
        return None
    return (run["wall_s"] - loop) + loop * EXTRAPOLATE_TO / n_query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10x smaller train split and queries")
    ap.add_argument("--queries", type=int, default=None, help=f"query rows (default {N_QUERY:,}; --quick: 500)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-cpu", action="store_true", help="also run --backend torch --device cpu")
    ap.add_argument("--skip-sweep", action="store_true", help="leave out the sweep runs")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store and indexes here")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    a = ap.parse_args()
    n_train = a.n_train or (N_TRAIN // 10 if a.quick else N_TRAIN)
    n_query = a.queries or (N_QUERY // 10 if a.quick else N_QUERY)

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"scale-{n_train}x{a.dim}-{n_query}-{a.seed}.h5"
        if not store.exists():
            t0 = time.perf_counter()
            ctx = multiprocessing.get_context("spawn")  # this process never holds the arrays
            maker = ctx.Process(target=make_store, args=(store, n_train, n_query, a.dim, a.classes, a.seed))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the synthetic store failed")
            print(
                f"made {store.name} ({store.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
            )
        flat, sharded = work / "flat.faiss", work / "sharded.faiss"
        runs: dict[str, tuple[str, list[str]]] = {
            "index flat": ("index", ["index", str(store), "--out", str(flat)]),
            "index --shards 4": ("index", ["index", str(store), "--out", str(sharded), "--shards", "4"]),
        }
        evals = {
            "classify --k 20 --method knn": ["classify", str(store), "--k", "20", "--method", "knn"],
            "classify --k 50 --method nnk": ["classify", str(store), "--k", "50", "--method", "nnk"],
        }
        if not a.skip_sweep:
            evals["sweep --k 10..200 --method both"] = ["sweep", str(store), "--k", "10..200", "--method", "both"]
        for name, args in evals.items():
            runs[f"{name} (flat)"] = ("eval", [*args, "--index", str(flat)])
            runs[f"{name} (shards 4)"] = ("eval", [*args, "--index", str(sharded)])
        devices = []
        if a.torch_cpu:
            devices.append("cpu")
        if _torch_sees_cuda():
            devices.append("cuda")
        for device in devices:
            for name, args in evals.items():
                runs[f"{name} (torch {device})"] = ("eval", [*args, "--backend", "torch", "--device", device])
        results = {}
        for name, (kind, args) in runs.items():
            r = measured(args)
            r["kind"] = kind
            r["to_50k_s"] = extrapolate(r, n_query) if kind == "eval" else None
            results[name] = r
            print(f"  {name:<48} {r['wall_s']:8.2f}s {r['peak_rss_mib']:8.0f} MiB", file=sys.stderr)

    def top1(r):
        rows = r["doc"].get("results") or []
        return {
            m: max(x["top1"] for x in rows if x["method"] == m)
            for m in ("nnk", "knn")
            if any(x["method"] == m for x in rows)
        }

    print(f"\nsynthetic store: {n_train:,} x {a.dim} float16 train rows, {n_query:,} queries, {a.classes} classes")
    print(f"{'run':<50}{'wall s':>9}{'peak RSS MiB':>14}{'s at 50k queries':>18}  top-1 %")
    for name, r in results.items():
        ext = f"{r['to_50k_s']:>18.1f}" if r["to_50k_s"] is not None else f"{'-':>18}"
        acc = ", ".join(f"{m} {v:.2f}" for m, v in top1(r).items()) if r["kind"] == "eval" else ""
        print(f"{name:<50}{r['wall_s']:>9.2f}{r['peak_rss_mib']:>14.0f}{ext}  {acc}")
    print()
    pairs = [("index --shards 4", "index flat")] + [(f"{n} (shards 4)", f"{n} (flat)") for n in evals]
    for sharded_name, flat_name in pairs:
        ratio = results[sharded_name]["peak_rss_mib"] / results[flat_name]["peak_rss_mib"]
        same = (
            ""
            if results[sharded_name]["kind"] == "index"
            else (
                "  same results"
                if results[sharded_name]["doc"]["results"] == results[flat_name]["doc"]["results"]
                else "  RESULTS DIFFER"
            )
        )
        print(
            f"peak RSS {sharded_name} / flat: {100 * ratio:5.1f} %  (target <= 40 %)  "
            f"{'PASS' if ratio <= 0.40 else 'FAIL'}{same}"
        )
    if a.json:
        from _report import write_json  # beside this script

        write_json(
            a.json,
            "bench_scale",
            {
                "n_train": n_train,
                "n_query": n_query,
                "dim": a.dim,
                "classes": a.classes,
                "runs": {
                    k: {"wall_s": v["wall_s"], "peak_rss_mib": v["peak_rss_mib"], "to_50k_s": v["to_50k_s"]}
                    for k, v in results.items()
                },
            },
        )


def _torch_sees_cuda() -> bool:
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


if __name__ == "__main__":
    main()
