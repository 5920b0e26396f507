"""What ``nnk audit`` and ``nnk quality`` cost over a ``classify`` of the same queries.

The store is ``bench_pipeline.py``'s seeded synthetic mixture (the issue's size: 200,000 x 384
train rows, 100 classes). Both commands score every train row leave-one-out, so the baseline is
``classify`` of the same rows the same way -- the same search, the same NNK and k-NN scoring:

    classify STORE --k K --query-split train --exclude-self      (the baseline)
    audit STORE --k K --all --out audit.csv                      target: <= 1.3x the baseline
    quality STORE --split train --k K                            target: <= 1.3x the baseline

What the audit adds is its per-row bookkeeping (each chunk's weights by class), the sort and
the CSV; what quality adds is the interpolation error of each row (from the NNK weights the
solve already has), RankMe's SVD of at most 25,600 rows and alpha-ReQ's covariance (one pass
over the split). Runs are interleaved and repeated; the minimum of each is kept, so a busy
machine hurts all alike. A flat index is saved first, so no run builds one.

Usage:
    python benchmarks/bench_audit.py                 # the issue's sizes (long: 200,000 leave-one-out queries)
    python benchmarks/bench_audit.py --quick         # 20,000 x 128 (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine
from bench_pipeline import make_store, run_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each command (the minimum is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    a = ap.parse_args()
    n_train = a.n_train or (20_000 if a.quick else 200_000)
    dim = a.dim or (128 if a.quick else 384)
    host = machine()

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"synthetic-{n_train}x{dim}-{a.seed}.h5"
        if not store.exists():
            ctx = multiprocessing.get_context("spawn")  # the store's arrays die with the child
            maker = ctx.Process(target=make_store, args=(store, n_train, 1, dim, a.classes, a.seed))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the synthetic store failed")
        run_cli(["index", str(store)])
        k = str(a.k)
        runs = {
            "classify (leave-one-out)": ["classify", str(store), "--k", k, "--query-split", "train", "--exclude-self"],
            "audit": ["audit", str(store), "--k", k, "--all", "--out", str(work / "audit.csv")],
            "quality": ["quality", str(store), "--split", "train", "--k", k],
        }
        walls: dict[str, list[float]] = {name: [] for name in runs}
        streams: dict[str, list[float]] = {name: [] for name in runs}  # the search and scoring alone
        docs = {}
        for rep in range(a.repeat):
            for name, args in runs.items():  # interleaved: both see the same machine load
                r = run_cli(args)
                walls[name].append(r["wall_s"])
                streams[name].append(r["doc"]["timing"]["total_s"])
                docs[name] = r["doc"]
                print(f"  [{rep + 1}/{a.repeat}] {name:<26} {r['wall_s']:7.2f}s", file=sys.stderr)

    best = {name: min(w) for name, w in walls.items()}
    base = best["classify (leave-one-out)"]
    ratios = {name: best[name] / base for name in ("audit", "quality")}
    print(f"CPU: {host['cpu_model']} ({host['cores_available']} cores available), load {host['load_average']}")
    print(
        f"synthetic store: {n_train:,} x {dim} train rows, {a.classes} classes, k={a.k}; "
        f"{docs['audit']['audited']:,} leave-one-out queries each; min of {a.repeat} interleaved runs"
    )
    for name, w in walls.items():
        print(
            f"  {name:<26} min {best[name]:7.2f}s   all: {', '.join(f'{x:.2f}' for x in w)}   "
            f"(search + scoring: min {min(streams[name]):.2f}s)"
        )
    print()
    for name, ratio in ratios.items():
        print(f"{name} / classify: {ratio:.2f}x   (target <= 1.3x)  {'PASS' if ratio <= 1.3 else 'FAIL'}")
    if a.json:
        from _report import write_json

        write_json(
            a.json,
            "bench_audit",
            {
                "n_train": n_train,
                "dim": dim,
                "k": a.k,
                "repeats": a.repeat,
                "walls_s": walls,
                "streaming_s": streams,
                "ratio": ratios["audit"],
                "ratios": ratios,
            },
        )


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f}s in all)", file=sys.stderr)
