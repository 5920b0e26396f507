"""The certified bfloat16 search against the float32 one: ``classify --k 50 --method knn``, auto vs fp32.

Builds the stores of ``bench_pipeline.py`` (the synthetic 200,000 x 384 mixture with 10,000
queries; Fashion-MNIST raw pixels, 60,000 x 784 with the 10,000 test images), saves a flat
index, then runs the real CLI in subprocesses, interleaved over --repeats rounds (the minimum
of each is reported):

    classify --k 50 --method knn --search-kernel fp32     the baseline
    classify --k 50 --method knn --search-kernel bf16     target: <= 0.6x the baseline (on a CPU with bf16)
    classify --k 50 --method knn --search-kernel auto     what the default runs (the JSON names the kernel)

and checks that the runs' per-query files (``--out``: neighbors, scores, predictions) hold
the same arrays. Also measured in this run, between the rounds (best of all): the float32
GEMM rate (numpy) and the bfloat16 ones (oneMKL and torch, where installed) of a 2,048 x 32,768 x d
product taken in the search's blocks of rows, on one thread (each search task runs on one worker
thread) and on --threads threads; and
the CPU's model and flags. The JSON timing of each run says which kernel ran and how many
queries fell back to float32.

Usage:
    python benchmarks/bench_search_kernel.py                       # both stores, the issue's sizes
    python benchmarks/bench_search_kernel.py --dataset synthetic   # one store
    python benchmarks/bench_search_kernel.py --quick               # 20,000 x 128 synthetic, 2,000 queries
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import machine, write_json
from bench_pipeline import FASHION, make_fashion_store, make_store, run_cli

KERNELS = ("fp32", "bf16", "auto")


def gemm_rates(threads: int, d: int, m: int = 2048, n: int = 32768) -> dict[str, float | None]:
    """GFLOP/s of an m x n x d product, taken as the search takes it: blocks of rows of 2^22 products (the
    bfloat16 kernel's block; the float32 one's is 16 MiB) into one reused result. numpy float32; bfloat16 by
    oneMKL (each thread its own share of the rows, as the search's workers call it) and by torch; None where
    a library is missing. Best of 3."""
    import threading

    from threadpoolctl import threadpool_limits

    from nnkcli.index_kernel import BF16_BLOCK_ELEMENTS

    step = max(1, BF16_BLOCK_ELEMENTS // m)

    rng = np.random.default_rng(0)
    q = rng.standard_normal((m, d), dtype=np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)
    out = np.empty((m, step), dtype=np.float32)
    n = n // step * step
    flop = 2.0 * m * n * d

    def best(run) -> float:
        run()  # warm up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return flop / min(times) / 1e9

    rates: dict[str, float | None] = {"fp32": None, "bf16_mkl": None, "bf16_torch": None}
    with threadpool_limits(threads):
        rates["fp32"] = best(lambda: [np.matmul(q, x[j : j + step].T, out=out) for j in range(0, n, step)])
    from nnkcli.index_bf16 import round_bf16
    from nnkcli.index_mkl import gemm_bf16, mkl_unavailable

    if mkl_unavailable() is None:
        qb, xb = round_bf16(q)[0], round_bf16(x)[0]
        blocks = np.array_split(np.arange(0, n, step), threads)  # each thread its share of the row blocks
        outs = [np.empty((m, step), dtype=np.float32) for _ in blocks]

        def mkl_share(starts: np.ndarray, o: np.ndarray) -> None:
            for j in starts.tolist():
                gemm_bf16(qb, xb[j : j + step], o)

        def mkl_all() -> None:
            workers = [threading.Thread(target=mkl_share, args=(b, o)) for b, o in zip(blocks, outs, strict=True)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        rates["bf16_mkl"] = best(mkl_all)
    try:
        import torch
    except ImportError:
        return rates
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ql, xl = torch.from_numpy(q).bfloat16(), torch.from_numpy(x).bfloat16()
        low = torch.empty((m, step), dtype=torch.bfloat16)
        rates["bf16_torch"] = best(lambda: [torch.mm(ql, xl[j : j + step].T, out=low) for j in range(0, n, step)])
    finally:
        torch.set_num_threads(before)
    return rates


def library() -> str | None:
    """The library the bfloat16 kernel runs on here (None: it cannot run)."""
    from nnkcli.index_bf16 import bf16_unavailable, product_library

    return product_library().name if bf16_unavailable() is None else None


def same_outputs(a: Path, b: Path) -> bool:
    """The two ``--out`` files hold the same datasets with equal arrays (attributes, with the timings, aside)."""
    import h5py

    def arrays(path: Path) -> dict:
        found = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return found

    x, y = arrays(a), arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[key], y[key]) for key in x)


def make(store: Path, dataset: str, n_query: int, n_train: int, dim: int, data: Path) -> None:
    if store.exists():
        return
    ctx = multiprocessing.get_context("spawn")  # this process never holds the arrays
    args = (store, data, n_query) if dataset == "fashion-mnist" else (store, n_train, n_query, dim, 100, 0)
    maker = ctx.Process(target=make_fashion_store if dataset == "fashion-mnist" else make_store, args=args)
    maker.start()
    maker.join()
    if maker.exitcode != 0:
        raise SystemExit(f"making the {dataset} store failed")


def bench_store(store: Path, dim: int, repeats: int, threads: int, k: int, work: Path) -> dict:
    run_cli(["index", str(store)])
    best: dict = {}
    rates1: list[dict] = []
    for rnd in range(repeats):
        rates1.append(gemm_rates(1, dim))
        for kernel in KERNELS:
            out = work / f"{store.stem}-{kernel}.h5"
            out.unlink(missing_ok=True)
            r = run_cli(
                ["classify", str(store), "--k", str(k), "--method", "knn", "--search-kernel", kernel]
                + ["--threads", str(threads), "--out", str(out)]
            )
            t = r["doc"]["timing"]
            print(
                f"  round {rnd + 1}: {store.stem} {kernel:<5} {r['wall_s']:7.2f}s  search {t['search_s']:6.2f}s"
                f"  kernel {t.get('search_kernel')}  fallbacks {t.get('search_fallbacks')}",
                file=sys.stderr,
            )
            if kernel not in best or r["wall_s"] < best[kernel]["wall_s"]:
                best[kernel] = {
                    "wall_s": round(r["wall_s"], 3),
                    "search_s": t["search_s"],
                    "search_kernel": t.get("search_kernel"),
                    "search_fallbacks": t.get("search_fallbacks"),
                    "peak_rss_mib": round(r["peak_rss_mib"], 1),
                }
    identical = all(same_outputs(work / f"{store.stem}-fp32.h5", work / f"{store.stem}-{k}.h5") for k in KERNELS[1:])
    rates_t = gemm_rates(threads, dim)
    one = {key: max((r[key] or 0.0) for r in rates1) or None for key in rates_t}
    return {
        "runs": best,
        "ratio_auto_over_fp32": round(best["auto"]["wall_s"] / best["fp32"]["wall_s"], 3),
        "ratio_bf16_over_fp32": round(best["bf16"]["wall_s"] / best["fp32"]["wall_s"], 3),
        "search_ratio_bf16": round(best["bf16"]["search_s"] / best["fp32"]["search_s"], 3),
        "identical_outputs": identical,
        "bf16_library": library(),
        "gemm_gflops_1_thread": {key: round(v, 1) if v else None for key, v in one.items()},
        "gemm_gflops_threads": {key: round(v, 1) if v else None for key, v in rates_t.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "fashion-mnist", "both"), default="both")
    ap.add_argument("--data", type=Path, default=FASHION, help=f"Fashion-MNIST IDX directory (default {FASHION})")
    ap.add_argument("--quick", action="store_true", help="20,000 x 128 synthetic, 2,000 queries (a smoke run)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds, minimum taken (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="--threads of every run (default: the cores available)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    a = ap.parse_args()
    from nnkcli.parallel import available_cores

    threads = a.threads or available_cores()
    repeats = a.repeats or (1 if a.quick else 3)
    datasets = ("synthetic",) if a.quick else ("synthetic", "fashion-mnist") if a.dataset == "both" else (a.dataset,)
    m = machine()
    print(f"CPU: {m['cpu_model']} (family {m['cpu_family']} model {m['cpu_model_number']})", file=sys.stderr)
    print(f"flags: {' '.join(m['cpu_flags'])}", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for dataset in datasets:
            n_query = 2_000 if a.quick else 10_000
            n_train, dim = (60_000, 784) if dataset == "fashion-mnist" else (20_000, 128) if a.quick else (200_000, 384)
            store = work / (f"{dataset}-{n_train}x{dim}-{n_query}.h5")
            make(store, dataset, n_query, n_train, dim, a.data)
            results[dataset] = r = bench_store(store, dim, repeats, threads, a.k, work)
            g1, gt = r["gemm_gflops_1_thread"], r["gemm_gflops_threads"]
            runs = r["runs"]
            print(
                f"{dataset}: classify --k {a.k} --method knn  fp32 {runs['fp32']['wall_s']:.2f}s  "
                f"bf16 {runs['bf16']['wall_s']:.2f}s ({runs['bf16']['search_fallbacks']} fallbacks): "
                f"{r['ratio_bf16_over_fp32']:.2f}x (target <= 0.6), search {r['search_ratio_bf16']:.2f}x;  "
                f"auto ({runs['auto']['search_kernel']}) {r['ratio_auto_over_fp32']:.2f}x;  "
                f"identical outputs: {r['identical_outputs']}\n"
                f"  bf16 library: {r['bf16_library']}; GEMM 2048x32768x{dim} GFLOP/s: 1 thread fp32 {g1['fp32']} "
                f"bf16 oneMKL {g1['bf16_mkl']} torch {g1['bf16_torch']}; {threads} threads fp32 {gt['fp32']} "
                f"bf16 oneMKL {gt['bf16_mkl']} torch {gt['bf16_torch']}"
            )
    if a.json:
        write_json(a.json, "bench_search_kernel", {"k": a.k, "threads": threads, "repeats": repeats, **results})


if __name__ == "__main__":
    main()
