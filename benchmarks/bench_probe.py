"""``nnk probe``'s whole C selection plus refit against ONE scikit-learn fit at the chosen C, in one run.

The store is ``bench_pipeline.py``'s seeded synthetic mixture (default 200,000 x 384 train
rows, 100 classes on a curved 32-d manifold, 10,000 queries): learnable by a linear model,
far from separable. Then, in this one process:

1. ``nnkcli.probe(store)`` with its defaults: DINOv2's 45 values of C, 10 % of train held
   out, warm starts, early stopping; the refit on every train row at the chosen C;
2. ``sklearn.linear_model.LogisticRegression(C=chosen, solver="lbfgs", max_iter=1000)`` fitted
   once, from zero, on the same (L2-normalised, float32) train rows.

Target: (1)'s selection + refit takes less time than (2), and the two query top-1 agree
within 0.1 point. Both use every core the process may use (``--threads`` caps both).

Usage:
    python benchmarks/bench_probe.py                       # the issue's size (~minutes on 2 cores)
    python benchmarks/bench_probe.py --rows 20000 --dim 128 --classes 20   # a quick run
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="train rows")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads of both (default: every core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each side's fastest is compared")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    a = ap.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from nnkcli import FeatureStore, probe
    from nnkcli.numerics.kernels import normalize_rows
    from nnkcli.parallel import resolve_threads

    threads = resolve_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"synthetic-{a.rows}x{a.dim}-{a.classes}c-{a.seed}.h5"
        if not store.exists():
            ctx = multiprocessing.get_context("spawn")
            maker = ctx.Process(target=make_store, args=(store, a.rows, a.queries, a.dim, a.classes, a.seed))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the synthetic store failed")

        with FeatureStore(store) as s:
            xt, yt = normalize_rows(s["train"].read()), s["train"].labels
            xq, yq = normalize_rows(s["val"].read()), s["val"].labels
        rounds = []
        for r in range(a.repeats):
            # interleaved rounds, each the probe then scikit-learn: a change in the machine's load hits both
            t0, c0 = time.perf_counter(), time.process_time()
            result = probe(store, threads=threads)
            probe_wall, probe_cpu = time.perf_counter() - t0, time.process_time() - c0
            doc = result.to_dict()
            C = doc["chosen_c"]
            print(f"  round {r + 1}: nnk probe C={C:.4g} in {probe_wall:.1f}s", file=sys.stderr)
            with threadpool_limits(threads):
                t0, c0 = time.perf_counter(), time.process_time()
                ref = LogisticRegression(C=C, max_iter=1000).fit(xt, yt)
                sk_s, sk_cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"  round {r + 1}: sklearn in {sk_s:.1f}s", file=sys.stderr)
            rounds.append(
                {
                    "probe_select_refit_s": doc["timing"]["select_s"] + doc["timing"]["refit_s"],
                    "probe_total_s": doc["timing"]["total_s"],
                    "probe_cpu_s": probe_cpu,
                    "sklearn_fit_s": sk_s,
                    "sklearn_cpu_s": sk_cpu,
                    "chosen_c": C,
                }
            )
        if len({r["chosen_c"] for r in rounds}) != 1:
            raise SystemExit(f"the probe chose different C in its rounds: {[r['chosen_c'] for r in rounds]}")
        sk_top1 = 100.0 * float(np.mean(ref.predict(xq) == yq))

    # each side's fastest round: the one least disturbed by other processes
    ours_s = min(r["probe_select_refit_s"] for r in rounds)
    sk_s = min(r["sklearn_fit_s"] for r in rounds)
    probe_cpu = min(r["probe_cpu_s"] for r in rounds)
    sk_cpu = min(r["sklearn_cpu_s"] for r in rounds)
    total_s = min(r["probe_total_s"] for r in rounds)
    sel = doc["selection"]
    top1 = doc["results"][0]["top1"]
    ratio = ours_s / sk_s
    iters = sum(p["iterations"] for p in sel["curve"])
    evals = sum(p["evaluations"] for p in sel["curve"]) + doc["refit"]["evaluations"]
    held = sum(p["stopped_on_held_out"] for p in sel["curve"])
    # the machine is shared: CPU seconds (all threads) are what other processes' load changes least
    cpu_ratio = probe_cpu / sk_cpu
    print(
        f"synthetic store: {a.rows:,} x {a.dim} train, {a.queries:,} queries, {a.classes} classes; {threads} threads; "
        f"the fastest of {a.repeats} interleaved round(s) of each"
    )
    print(
        f"  nnk probe selection + refit  {ours_s:8.2f}s  ({len(sel['curve'])} of 45 C values, {iters} L-BFGS "
        f"iterations, {held} stopped on the held-out top-1; refit {doc['refit']['iterations']}; {evals} "
        f"objective evaluations in all; whole command {total_s:.2f}s, {probe_cpu:.1f} CPU s)"
    )
    print(
        f"  sklearn lbfgs, one fit      {sk_s:8.2f}s  ({int(ref.n_iter_[0])} iterations, {sk_cpu:.1f} CPU s) "
        f"at C={C:.4g}"
    )
    print(f"  query top-1: nnk probe {top1:.2f} %, sklearn {sk_top1:.2f} %  (difference {top1 - sk_top1:+.2f} points)")
    # percentages of 10,000 queries: 88.95 - 88.85 is 0.10000000000000853 in binary floating point
    ok = ratio < 1 and abs(round(top1 - sk_top1, 6)) <= 0.1
    print(
        f"\nnnk probe (selection + refit) / one sklearn fit: {ratio:.2f}x   (target < 1, top-1 within 0.1 point)  "
        f"{'PASS' if ok else 'FAIL'}"
    )
    print(f"CPU seconds, whole nnk probe command / one sklearn fit: {cpu_ratio:.2f}x")
    if a.json:
        from _report import write_json

        write_json(
            a.json,
            "bench_probe",
            {
                "rows": a.rows,
                "queries": a.queries,
                "dim": a.dim,
                "classes": a.classes,
                "threads": threads,
                "chosen_c": C,
                "probe_select_refit_s": ours_s,
                "probe_total_s": total_s,
                "sklearn_fit_s": sk_s,
                "sklearn_iterations": int(ref.n_iter_[0]),
                "ratio": ratio,
                "probe_cpu_s": probe_cpu,
                "sklearn_cpu_s": sk_cpu,
                "cpu_ratio": cpu_ratio,
                "probe_evaluations": evals,
                "refit_iterations": doc["refit"]["iterations"],
                "probe_top1": top1,
                "sklearn_top1": sk_top1,
                "repeats": a.repeats,
                "rounds": rounds,
                "curve": sel["curve"],
            },
        )


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f}s in all)", file=sys.stderr)
