"""End-to-end cost of NNK versus kNN, of a sweep versus one classify, the search against the GEMM peak, and a busy
machine.

Builds a store, saves a flat index, then runs the real CLI in subprocesses and reports
wall time and peak RSS of each run, all measured in this run, interleaved over
--repeats rounds (the minimum of each is reported):

    classify --k 20  --method knn        search efficiency at k = 20
    classify --k 50  --method knn        baseline of the NNK ratio; search efficiency at k = 50
    classify --k 50  --method nnk        target: <= 1.1x the kNN run
    classify --k 200 --method knn        baseline of the k = 200 ratio; search efficiency at k = 200
    classify --k 200 --method both       target: <= 1.2x the kNN run at k = 200
    sweep --k 10..200 --method both      target: <= 1.2x the classify --k 200 --method both run

Stores (--dataset):
    synthetic       a seeded mixture of 100 classes on a curved 32-d manifold in 384-d,
                    200,000 train rows, 10,000 queries (see make_store)
    fashion-mnist   Fashion-MNIST raw pixels, d = 784: 60,000 train images, the 10,000 test
                    images as queries (the IDX files Debian's dataset-fashion-mnist package
                    installs under /usr/share/datasets/fashion-mnist, or --data DIR)

``--dataset both`` measures the two stores in one run, their rounds interleaved.

The limits, measured in the same run between the CLI rounds (best of all): numpy's float32 and
torch's bfloat16 (where torch is installed: oneDNN, AMX or AVX-512 BF16 where the CPU has them)
4096^3 products (2048^3 with --quick), on one thread and on --threads threads; and the CPU's
model and flags. Search efficiency = (2 n_query n_train d FLOP of the flat search) / (search
seconds) / (float32 GEMM rate of one thread), also shown against the bfloat16 rate: each search
task runs on one worker thread, and the run's ``timing.search_s`` sums the seconds of those
tasks. Each run's search share is its search seconds over its workers' seconds (search,
re-ranking, k-NN, NNK, reading). ``--search-kernel K`` passes the option to every run where
the CLI has it.

--busy adds the busy-machine check (target <= 2.5x): ``classify --k 200 --method both`` idle,
then while N = cores CPU-bound competitor processes run (each a numpy loop, started by this
script and stopped by it, and bounded in time by itself in case this script dies).

Usage:
    python benchmarks/bench_pipeline.py                          # synthetic, the issue's sizes
    python benchmarks/bench_pipeline.py --dataset fashion-mnist  # raw pixels, d = 784
    python benchmarks/bench_pipeline.py --dataset both --busy    # the issue's targets, one run
    python benchmarks/bench_pipeline.py --busy                   # + the busy-machine check
    python benchmarks/bench_pipeline.py --quick                  # 20,000 x 128, 2,000 queries (~1 min)
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def manifold_sampler(n_classes: int, dim: int, seed: int):
    """``sample(n) -> (x (n, dim) float32, y (n,))``: draws of ``make_store``'s mixture, seeded.

    Consecutive calls continue one random stream, so the same sizes in the same order give
    the same rows (``bench_scale.py`` streams its store through this in blocks).
    """
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

    return sample


def make_store(path: Path, n_train: int, n_query: int, dim: int, n_classes: int, seed: int) -> None:
    """A mixture of ``n_classes`` classes on a curved 32-dimensional manifold in ``dim`` dimensions.

    Each class has 4 Gaussian modes in a 32-d latent space (classes overlap there),
    mapped to ``dim`` dimensions by a random two-layer tanh map, plus weak isotropic
    noise. Like self-supervised features, neighborhoods are low-dimensional; plain
    isotropic high-dimensional noise would instead make all neighbors nearly
    orthogonal, which no real feature extractor produces (and which makes NNK keep
    most neighbors instead of the ~10-25 it keeps on real features).
    """
    from nnkcli.storage.store import write_split

    sample = manifold_sampler(n_classes, dim, seed)
    xt, yt = sample(n_train)
    xq, yq = sample(n_query)
    write_split(path, "train", xt, yt, source="synthetic benchmark mixture (32-d manifold)")
    write_split(path, "val", xq, yq, source="synthetic benchmark mixture (32-d manifold)")


def read_idx(path: Path, magic_expected: int) -> np.ndarray:
    """An IDX file (gzip or not): images flattened to (n, rows * cols) uint8, or labels (n,) uint8."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic = int(np.frombuffer(raw[:4], dtype=">u4")[0])
    if magic != magic_expected:
        raise SystemExit(f"{path}: not an IDX file of the expected kind (magic {magic})")
    if magic == 2049:
        return np.frombuffer(raw, dtype=np.uint8, offset=8)
    n, rows, cols = (int(v) for v in np.frombuffer(raw[4:16], dtype=">u4"))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def find_idx(data: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data / name).exists():
            return data / name
    raise SystemExit(
        f"Fashion-MNIST file {stem}(.gz) not found in {data}; install dataset-fashion-mnist or pass --data DIR"
    )


def make_fashion_store(path: Path, data: Path, n_query: int) -> None:
    """Fashion-MNIST raw pixels (uint8 -> float32, d = 784): train split = 60,000 images, val = test images."""
    from nnkcli.storage.store import write_split

    xt = read_idx(find_idx(data, "train-images-idx3-ubyte"), 2051).astype(np.float32)
    yt = read_idx(find_idx(data, "train-labels-idx1-ubyte"), 2049).astype(np.int64)
    xq = read_idx(find_idx(data, "t10k-images-idx3-ubyte"), 2051).astype(np.float32)[:n_query]
    yq = read_idx(find_idx(data, "t10k-labels-idx1-ubyte"), 2049).astype(np.int64)[:n_query]
    write_split(path, "train", xt, yt, source="Fashion-MNIST train images, raw pixels")
    write_split(path, "val", xq, yq, source="Fashion-MNIST test images, raw pixels")


def run_cli(args: list[str]) -> dict:
    """Run ``python -m nnkcli ARGS --format json``; wall seconds, CPU seconds, peak RSS (MiB), parsed output."""
    from _report import run_measured  # beside this script

    cmd = [sys.executable, "-m", "nnkcli", *args, "--format", "json"]
    r = run_measured(cmd)
    if r["returncode"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r['returncode']}):\n{r['stderr'].decode()}")
    doc = json.loads(r["stdout"])
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"], "doc": doc}


def gemm_rates(threads: int, n: int) -> dict:
    """float32 (numpy) and bfloat16 (torch; None without it) n^3 product GFLOP/s on 1 and ``threads`` threads."""
    from _report import gemm_rate  # beside this script

    return {
        "float32_1": gemm_rate(n, 1, "float32"),
        "float32": gemm_rate(n, threads, "float32"),
        "bfloat16_1": gemm_rate(n, 1, "bfloat16"),
        "bfloat16": gemm_rate(n, threads, "bfloat16"),
    }


def supports(option: str) -> bool:
    """Whether ``nnk classify`` takes ``option`` (a benchmark passes a newer option only where it exists)."""
    out = subprocess.run([sys.executable, "-m", "nnkcli", "classify", "--help"], capture_output=True, text=True)
    return option in out.stdout


def search_share(timing: dict) -> float | None:
    """The search's share of the workers' seconds of a run (search, re-ranking, k-NN, NNK, reading)."""
    parts = [timing.get(key) or 0.0 for key in ("search_s", "rerank_s", "knn_s", "nnk_s", "read_s")]
    return timing["search_s"] / sum(parts) if sum(parts) > 0 else None


_FLAT_RATES = r"""
import sys, time
import numpy as np
from threadpoolctl import threadpool_limits
import faiss
from nnkcli.index_flat import flat_search
d, n, m, k = (int(v) for v in sys.argv[1:5])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d), dtype=np.float32)
q = rng.standard_normal((m, d), dtype=np.float32)
index = faiss.IndexFlatIP(d)
index.add(x)
faiss.omp_set_num_threads(1)
best = [np.inf, np.inf]
with threadpool_limits(1):
    for _ in range(3):  # interleaved, the minimum of each
        for i, run in enumerate((lambda: index.search(q, k), lambda: flat_search(x, q, k))):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
print(*(2.0 * n * m * d / b / 1e9 for b in best))
"""


def flat_search_rates(dim: int, k: int, n_train: int = 32768, n_query: int = 2048) -> tuple[float, float]:
    """GFLOP/s on one thread of faiss's own ``IndexFlatIP.search`` and of nnkcli's flat search, this run.

    In a child process (this one must not hold the arrays: see ``run_cli``). faiss's
    search multiplies with the OpenBLAS bundled in its wheel, nnkcli's with numpy's BLAS
    (see ``nnkcli.index.flat_search``); both keep the best k in faiss's heaps.
    """
    out = subprocess.run(
        [sys.executable, "-c", _FLAT_RATES, str(dim), str(n_train), str(n_query), str(k)],
        capture_output=True,
        text=True,
        check=True,
    )
    faiss_rate, ours = (float(v) for v in out.stdout.split())
    return faiss_rate, ours


def _competitor(seconds: float) -> None:
    """A CPU-bound process for at most ``seconds``: float32 products on one thread.

    The BLAS pool is capped here, in the child: the spawned child has imported numpy (this
    module's own import) before it runs this, so an ``OPENBLAS_NUM_THREADS`` set now would
    come too late, and each competitor would run a second BLAS thread.
    """
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(1).standard_normal((512, 512), dtype=np.float32)
    end = time.monotonic() + seconds
    with threadpool_limits(1):
        while time.monotonic() < end:
            a = np.tanh(a @ a.T * np.float32(1e-3))


def busy(cores: int, seconds: float):
    """Start ``cores`` competitor processes; returns a function that stops them (their ids in ``.pids``)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_competitor, args=(seconds,), daemon=True) for _ in range(cores)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let them get going

    def stop():
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()

    stop.pids = [p.pid for p in procs]
    return stop


def best_top1(doc: dict) -> dict[str, float]:
    """The best top-1 of each method of a classify or sweep document."""
    best: dict[str, float] = {}
    for row in doc["results"]:
        best[row["method"]] = max(best.get(row["method"], 0.0), row["top1"])
    return best


#: end-to-end ratios and their targets (issue 30): (name, run, baseline run, target)
RATIOS = (
    ("nnk / knn at k=50", "classify k=50 nnk", "classify k=50 knn", 1.1),
    ("both / knn at k=200", "classify k=200 both", "classify k=200 knn", 1.2),
    ("sweep 10..200 / classify 200 both", "sweep k=10..200 both", "classify k=200 both", 1.2),
)
BUSY_TARGET = 2.5


def dataset_sizes(dataset: str, a) -> tuple[int, int, int]:
    """(n_train, n_query, dim) of a dataset at the command line's sizes."""
    n_query = a.n_query or (2_000 if a.quick else 10_000)
    if dataset == "fashion-mnist":
        return 60_000, n_query, 784
    return a.n_train or (20_000 if a.quick else 200_000), n_query, a.dim or (128 if a.quick else 384)


def prepare(dataset: str, a, work: Path) -> Path:
    n_train, n_query, dim = dataset_sizes(dataset, a)
    fashion = dataset == "fashion-mnist"
    store = work / (f"fashion-mnist-{n_query}.h5" if fashion else f"synthetic-{n_train}x{dim}-{n_query}-{a.seed}.h5")
    if not store.exists():
        t0 = time.perf_counter()
        # in a child process: a child's peak RSS starts at its parent's at fork time,
        # so this process must never hold the arrays itself
        ctx = multiprocessing.get_context("spawn")
        maker = ctx.Process(
            target=make_fashion_store if fashion else make_store,
            args=(store, a.data, n_query) if fashion else (store, n_train, n_query, dim, a.classes, a.seed),
        )
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise SystemExit("making the store failed")
        print(f"made {store.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument(
        "--dataset",
        choices=("synthetic", "fashion-mnist", "both"),
        default="synthetic",
        help="the store(s); both: the two in one run, their rounds interleaved",
    )
    ap.add_argument("--data", type=Path, default=FASHION, help=f"Fashion-MNIST IDX directory (default {FASHION})")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-query", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds, minimum taken (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="--threads of every run (default: the cores available)")
    ap.add_argument(
        "--search-kernel",
        default=None,
        help="pass --search-kernel KERNEL to every run (skipped, with a note, where the CLI has no such option)",
    )
    ap.add_argument(
        "--busy",
        action="store_true",
        help="also run classify --k 200 --method both beside N = cores CPU-bound competitor processes",
    )
    ap.add_argument("--only-busy", action="store_true", help="run only the busy-machine check")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    threads = a.threads or cores
    repeats = a.repeats or (1 if a.quick else 3)
    datasets = ["synthetic", "fashion-mnist"] if a.dataset == "both" else [a.dataset]
    gemm_n = 2048 if a.quick else 4096
    common = ["--threads", str(threads)]
    kernel = None
    if a.search_kernel:
        if supports("--search-kernel"):
            kernel = a.search_kernel
            common += ["--search-kernel", kernel]
        else:
            print(f"note: this nnkcli has no --search-kernel; {a.search_kernel!r} not passed", file=sys.stderr)
    from _report import cpu_line, machine  # beside this script

    print(f"CPU: {cpu_line(machine())}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        stores = {d: prepare(d, a, work) for d in datasets}
        built = {d: run_cli(["index", str(store)]) for d, store in stores.items()}
        runs = {
            d: {
                "classify k=20 knn": ["classify", str(store), "--k", "20", "--method", "knn"],
                "classify k=50 knn": ["classify", str(store), "--k", "50", "--method", "knn"],
                "classify k=50 nnk": ["classify", str(store), "--k", "50", "--method", "nnk"],
                "classify k=200 knn": ["classify", str(store), "--k", "200", "--method", "knn"],
                "classify k=200 both": ["classify", str(store), "--k", "200", "--method", "both"],
                "sweep k=10..200 both": ["sweep", str(store), "--k", "10..200", "--method", "both"],
            }
            for d, store in stores.items()
        }
        if a.only_busy:
            runs = {d: {} for d in datasets}
        results: dict = {d: {} for d in datasets}
        rates: list[dict] = []
        for rnd in range(repeats):
            rates.append(gemm_rates(threads, gemm_n))
            for d in datasets:
                for name, args in runs[d].items():
                    r = run_cli(args + common)
                    best = results[d].get(name)
                    if best is None or r["wall_s"] < best["wall_s"]:
                        results[d][name] = {**r, "cpu_s": min(r["cpu_s"], best["cpu_s"]) if best else r["cpu_s"]}
                    else:
                        best["cpu_s"] = min(best["cpu_s"], r["cpu_s"])
                    print(
                        f"  round {rnd + 1}: {d:<13} {name:<22} {r['wall_s']:7.2f}s  {r['peak_rss_mib']:8.0f} MiB",
                        file=sys.stderr,
                    )
        rates.append(gemm_rates(threads, gemm_n))
        best_rate = {key: max((r[key] for r in rates if r[key] is not None), default=None) for key in rates[0]}
        flat_rates = {d: flat_search_rates(dataset_sizes(d, a)[2], 50) for d in datasets}
        busy_rows: dict = {}
        if a.busy or a.only_busy:
            for d in datasets:
                args = ["classify", str(stores[d]), "--k", "200", "--method", "both"] + common
                idle, loaded = [], []
                for rnd in range(repeats):
                    idle.append(run_cli(args)["wall_s"])
                    stop = busy(cores, seconds=600)
                    try:
                        loaded.append(run_cli(args)["wall_s"])
                    finally:
                        stop()
                    print(
                        f"  round {rnd + 1}: {d} busy check idle {idle[-1]:.2f}s, with {cores} competitors "
                        f"{loaded[-1]:.2f}s",
                        file=sys.stderr,
                    )
                busy_rows[d] = {"idle_s": min(idle), "busy_s": min(loaded), "competitors": cores, "args": args}

    def rate(key):
        v = best_rate.get(key)
        return f"{v:.0f}" if v is not None else "n/a (no torch)"

    print(f"\nCPU: {cpu_line(machine())}")
    print(
        f"GEMM limits ({gemm_n}^3, this run, best of {len(rates)}): float32 (numpy) {rate('float32_1')} GFLOP/s on "
        f"1 thread, {rate('float32')} on {threads}; bfloat16 (torch) {rate('bfloat16_1')} on 1 thread, "
        f"{rate('bfloat16')} on {threads}"
    )
    measured = {}
    for d in datasets:
        n_train, n_query, dim = dataset_sizes(d, a)
        measured[d] = report_dataset(
            d, n_train, n_query, dim, results[d], runs[d], busy_rows.get(d), flat_rates[d], best_rate, threads, cores
        )
        measured[d]["index_s"] = built[d]["wall_s"]
    if a.json:
        from _report import write_json  # beside this script

        write_json(
            a.json,
            "bench_pipeline",
            {
                "threads": threads,
                "repeats": repeats,
                "search_kernel": kernel,
                "gemm_gflops": best_rate,
                "gemm_rounds": rates,
                "datasets": measured,
            },
        )


def report_dataset(d, n_train, n_query, dim, results, runs, busy_row, flat_rates, best_rate, threads, cores) -> dict:
    """Print one dataset's tables and ratios; its measurements as recorded in the JSON."""
    peak1 = best_rate["float32_1"]
    print(
        f"\n{'Fashion-MNIST raw pixels' if d == 'fashion-mnist' else 'synthetic store'}: {n_train:,} x {dim} train, "
        f"{n_query:,} queries; --threads {threads} of {cores} cores"
    )
    print(
        f"flat search of 2,048 random queries in 32,768 x {dim} rows at k = 50, one thread, this run: "
        f"faiss's IndexFlatIP.search {flat_rates[0]:.0f} GFLOP/s (the OpenBLAS in its wheel), "
        f"nnkcli's {flat_rates[1]:.0f} GFLOP/s (numpy's BLAS)"
    )
    eff, ratios, cpu_ratios = {}, {}, {}
    if results:
        print(
            f"\n{'run':<24}{'wall s':>9}{'peak RSS MiB':>14}{'search s':>10}{'search %':>10}{'nnk s':>8}"
            f"{'nnk top-1 %':>13}{'knn top-1 %':>13}"
        )
        for name, r in results.items():
            doc = r["doc"]
            cells = []
            for method in ("nnk", "knn"):
                rows = [x["top1"] for x in doc["results"] if x["method"] == method]
                cells.append(f"{max(rows):>13.2f}" if rows else f"{'-':>13}")
            t = doc["timing"]
            share = search_share(t)
            print(
                f"{name:<24}{r['wall_s']:>9.2f}{r['peak_rss_mib']:>14.0f}{t['search_s']:>10.2f}"
                f"{(f'{share:.0%}' if share is not None else '-'):>10}{t['nnk_s']:>8.2f}{''.join(cells)}"
            )
        flop = 2.0 * n_query * n_train * dim
        print("\nsearch rate (flat-search FLOP / search thread-seconds) against this run's one-thread GEMM limits:")
        for k in (20, 50, 200):
            t = results[f"classify k={k} knn"]["doc"]["timing"]
            gflops = flop / t["search_s"] / 1e9
            eff[k] = gflops / peak1
            bf16 = best_rate.get("bfloat16_1")
            print(
                f"  k = {k:<4} {gflops:6.0f} GFLOP/s = {eff[k]:6.1%} of float32"
                + (f", {gflops / bf16:6.1%} of bfloat16" if bf16 else "")
                + f"  (target >= 70 % of float32)  {'PASS' if eff[k] >= 0.7 else 'FAIL'}"
            )
        w = {name: r["wall_s"] for name, r in results.items()}
        c = {name: r["cpu_s"] for name, r in results.items()}
        ratios = {name: (w[run] / w[base], target) for name, run, base, target in RATIOS}
        cpu_ratios = {name: c[run] / c[base] for name, run, base, _ in RATIOS}
        print("\n(wall-time ratios against their targets; beside each, the CPU-time ratio, steadier when shared)")
        for name, (value, target) in ratios.items():
            print(
                f"{name + ':':<36}{value:5.2f}x   (target <= {target}x)  {'PASS' if value <= target else 'FAIL'}"
                f"   CPU {cpu_ratios[name]:5.2f}x"
            )
    if busy_row:
        ratio = busy_row["busy_s"] / busy_row["idle_s"]
        print(
            f"\nbusy machine: classify --k 200 --method both {busy_row['idle_s']:.2f}s idle, "
            f"{busy_row['busy_s']:.2f}s beside {cores} CPU-bound competitors: {ratio:.2f}x "
            f"(target <= {BUSY_TARGET}x)  {'PASS' if ratio <= BUSY_TARGET else 'FAIL'}"
        )
    return {
        "dataset": d,
        "n_train": n_train,
        "n_query": n_query,
        "dim": dim,
        "flat_search_gflops": {"faiss": flat_rates[0], "nnkcli": flat_rates[1]},
        "runs": {
            k: {
                "args": runs[k],
                "wall_s": v["wall_s"],
                "cpu_s": v["cpu_s"],
                "peak_rss_mib": v["peak_rss_mib"],
                "timing": v["doc"]["timing"],
                "search_share": search_share(v["doc"]["timing"]),
                "top1": best_top1(v["doc"]),
            }
            for k, v in results.items()
        },
        "ratios": {
            name: {"value": value, "target": target, "cpu": cpu_ratios.get(name)}
            for name, (value, target) in ratios.items()
        },
        "search_efficiency": {str(k): v for k, v in eff.items()},
        "busy": busy_row and {**busy_row, "target": BUSY_TARGET},
    }


if __name__ == "__main__":
    main()
