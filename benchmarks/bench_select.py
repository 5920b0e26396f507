"""What ``sweep --select-on train`` costs over a plain sweep, on the pipeline benchmark's store.

The store is ``bench_pipeline.py``'s seeded synthetic mixture (default 200,000 x 384 train
rows, 100 classes, 10,000 queries); a flat index is saved first. Then, interleaved and
repeated (the minimum of each is kept, so a busy machine hurts both alike):

    sweep --k 10..200 --method both                      (the baseline)
    sweep --k 10..200 --method both --select-on train    target: <= 2x the baseline

The selection is one more sweep over ``--select-queries`` (10,000) train rows as
leave-one-out queries through the same index, so with as many selection rows as queries
the ratio is about 2 by construction; the script measures what it really is, including
the random-row reads from the store.

Usage:
    python benchmarks/bench_select.py              # the issue's sizes (~10 min on 2 cores)
    python benchmarks/bench_select.py --quick      # 20,000 x 128, 2,000 queries (~1 min)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_store, run_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-query", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--select-queries", type=int, default=None, help="default: as many as the queries")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each command (the minimum is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    a = ap.parse_args()
    n_train = a.n_train or (20_000 if a.quick else 200_000)
    n_query = a.n_query or (2_000 if a.quick else 10_000)
    dim = a.dim or (128 if a.quick else 384)
    n_select = a.select_queries or n_query

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"synthetic-{n_train}x{dim}-{a.seed}.h5"
        if not store.exists():
            ctx = multiprocessing.get_context("spawn")
            maker = ctx.Process(target=make_store, args=(store, n_train, n_query, dim, a.classes, a.seed))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the synthetic store failed")
        run_cli(["index", str(store)])
        base = ["sweep", str(store), "--k", "10..200", "--method", "both"]
        runs = {
            "sweep": base,
            "sweep --select-on train": base + ["--select-on", "train", "--select-queries", str(n_select)],
        }
        walls: dict[str, list[float]] = {name: [] for name in runs}
        docs = {}
        for rep in range(a.repeat):
            for name, args in runs.items():  # interleaved: both see the same machine load
                r = run_cli(args)
                walls[name].append(r["wall_s"])
                docs[name] = r["doc"]
                print(f"  [{rep + 1}/{a.repeat}] {name:<24} {r['wall_s']:7.2f}s", file=sys.stderr)

    best = {name: min(w) for name, w in walls.items()}
    ratio = best["sweep --select-on train"] / best["sweep"]
    sel = docs["sweep --select-on train"]
    print(
        f"synthetic store: {n_train:,} x {dim} train, {n_query:,} queries, {a.classes} classes; "
        f"{sel['selection']['queries']:,} leave-one-out selection rows; min of {a.repeat} interleaved runs"
    )
    for name, w in walls.items():
        print(f"  {name:<26} min {best[name]:7.2f}s   all: {', '.join(f'{x:.2f}' for x in w)}")
    for m, e in sel["selected"].items():
        b = sel["best"][m]
        temperature = f" T={e['temperature']:g}" if "temperature" in e else ""
        print(
            f"  {m}: selected k={e['k']}{temperature} "
            f"top-1 {e['top1']:.2f} %   best on the query split k={b['k']} top-1 {b['top1']:.2f} % (optimistic)"
        )
    print(f"\nsweep --select-on train / sweep: {ratio:.2f}x   (target <= 2x)  {'PASS' if ratio <= 2 else 'FAIL'}")
    if a.json:
        from _report import write_json

        write_json(
            a.json,
            "bench_select",
            {
                "n_train": n_train,
                "n_query": n_query,
                "dim": dim,
                "repeats": a.repeat,
                "walls_s": walls,
                "best_s": best,
                "ratio": ratio,
                "selected": sel["selected"],
            },
        )


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f}s in all)", file=sys.stderr)
