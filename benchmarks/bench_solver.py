"""The batched NNK solver versus a per-query loop of scipy.optimize.nnls, on real features.

Problems come from Fashion-MNIST (the IDX files Debian's dataset package installs under
/usr/share/datasets/fashion-mnist, or --data DIR): rows L2-normalised, as raw pixels
(d = 784) and projected on their first 128 principal components (d = 128, renormalised);
test images are the queries, their k nearest training images (brute-force cosine) the
neighbors, cosine kernel. For each d and k = 20, 50, 200, both sides solve the same
queries in the same run (best of --repeats, interleaved):

  solver      G and g given (built beforehand).  ours: nnk_solve(G, g).  scipy: per query,
              Cholesky of G (eigendecomposition when G is singular: k > d + 1), a
              triangular solve, nnls on the equivalent least-squares problem.
  end-to-end  features given.  ours: nnk_weights(query, neighbors), i.e. kernel blocks
              + solve.  scipy: per query, the Gram matrix, then as above.
  stage       the NNK stage of classify: neighbor vectors and similarities given, G not.
              ours: nnk_solve_cosine, on the engine it picks (the compiled per-query kernel
              where numba is installed); "numpy q/s" is the same call with NNKCLI_COMPILED=0
              (float32 candidates, float64 polish and certificate).
              paper: the NNK paper's per-query loop, written from its description
              (float32 Gram; Cholesky solves on the kept set, dropping weights below 1e-10,
              until none is dropped), see ``paper_one``.

Printed per row: queries/s of both sides, their ratios, the peak memory of our call for the
whole chunk (tracemalloc, in a separate untimed call; inputs not counted) and the
largest relative KKT residual of each side's weights (lambda = G theta - g, computed
here the same way for all, in float64).

Usage:
    python benchmarks/bench_solver.py            # 2,000 queries per row (~2 min on 2 cores)
    python benchmarks/bench_solver.py --quick    # 300 queries per row (~20 s)
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.optimize import nnls

from nnkcli import kernel_blocks, nnk_solve, nnk_weights
from nnkcli.numerics import compiled
from nnkcli.numerics.cosine import nnk_solve_cosine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_json

DATA = Path("/usr/share/datasets/fashion-mnist")
KS = (20, 50, 200)
PCA_DIM = 128


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 images of an IDX3 file (gzip or not), flattened to (n, rows * cols)."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051:
        raise SystemExit(f"{path}: not an IDX image file (magic {magic})")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(n), int(rows) * int(cols))


def find(data: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data / name).exists():
            return data / name
    raise SystemExit(f"Fashion-MNIST file {stem}(.gz) not found in {data}; pass --data DIR")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def feature_sets(data: Path, n_query: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{d: (train (n, d), query (n_query, d))}, float32, rows unit-norm (d = PCA_DIM and 784)."""
    train = read_idx_images(find(data, "train-images-idx3-ubyte")).astype(np.float32)
    test = read_idx_images(find(data, "t10k-images-idx3-ubyte")).astype(np.float32)[:n_query]
    mean = train.mean(axis=0)
    basis = np.linalg.svd(train[::6] - mean, full_matrices=False)[2][:PCA_DIM]  # PCA on 10,000 rows
    return {
        PCA_DIM: (unit((train - mean) @ basis.T), unit((test - mean) @ basis.T)),
        784: (unit(train), unit(test)),
    }


def neighbors(train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Indices (n_query, k) of each query's k most cosine-similar training rows, nearest first."""
    out = np.empty((len(query), k), dtype=np.int64)
    for lo in range(0, len(query), 500):
        s = query[lo : lo + 500] @ train.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out[lo : lo + 500] = np.take_along_axis(part, order, 1)
    return out


def scipy_one(G: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The baseline for one query: factor G, then scipy's NNLS on the least-squares form."""
    try:
        L = np.linalg.cholesky(G)
        A, b = L.T, solve_triangular(L, g, lower=True)
    except np.linalg.LinAlgError:  # singular G (k > d + 1, duplicates): eigendecomposition
        e, V = np.linalg.eigh(G)
        keep = e > e[-1] * len(g) * np.finfo(float).eps
        A = np.sqrt(e[keep])[:, None] * V[:, keep].T
        b = (V[:, keep].T @ g) / np.sqrt(e[keep])
    return nnls(A, b, maxiter=50 * len(g))[0]


def paper_one(q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The NNK paper's per-query solver, written from its description (float32 throughout).

    Gram matrix and kernel vector in float32; start from all neighbors; solve the
    kept set's system by Cholesky, drop every weight at or below 1e-10, and repeat until
    nothing is dropped (at most 50 k passes); weights below 1e-10 are zero. Where the
    factorisation fails (singular G: k > d + 1, duplicates; 1e-10 on the diagonal, the
    paper code's regularisation, is below float32 resolution) the pass solves by least
    squares instead.
    """
    G = (np.float32(1) + X @ X.T) * np.float32(0.5)
    g = (np.float32(1) + X @ q) * np.float32(0.5)
    k = len(g)
    kept = np.flatnonzero(g > 1e-10)
    theta = np.zeros(k, dtype=np.float32)
    for _ in range(50 * k):
        if kept.size == 0:
            break
        A = G[np.ix_(kept, kept)]
        try:
            x = cho_solve(cho_factor(A, check_finite=False), g[kept], check_finite=False)
        except np.linalg.LinAlgError:
            x = np.linalg.lstsq(A, g[kept], rcond=None)[0]
        theta[:] = 0
        theta[kept] = x
        low = x <= 1e-10
        if not low.any():
            break
        kept = kept[~low]
    theta[theta < 1e-10] = 0
    return theta


def paper_loop(q, X):
    return np.array([paper_one(q[i], X[i]) for i in range(len(q))], dtype=np.float64)


def our_stage(q, X, sims):
    return nnk_solve_cosine(X, 0.5 * (1.0 + sims), [X.shape[1]])[0]


def numpy_stage(q, X, sims):
    old = os.environ.get("NNKCLI_COMPILED")
    os.environ["NNKCLI_COMPILED"] = "0"
    try:
        return our_stage(q, X, sims)
    finally:
        if old is None:
            del os.environ["NNKCLI_COMPILED"]
        else:
            os.environ["NNKCLI_COMPILED"] = old


def scipy_solver(G, g):
    return np.array([scipy_one(G[i], g[i]) for i in range(len(g))])


def scipy_end_to_end(q, X):
    out = np.empty(X.shape[:2])
    for i in range(len(q)):
        N = X[i].astype(np.float64)
        out[i] = scipy_one((1.0 + N @ N.T) / 2, (1.0 + N @ q[i].astype(np.float64)) / 2)
    return out


def kkt(G, g, theta) -> float:
    lam = np.einsum("bij,bj->bi", G, theta) - g
    viol = np.where(theta > 0, np.abs(lam), np.maximum(-lam, 0.0))
    return float((viol.max(axis=1) / np.abs(g).max(axis=1)).max())


def best_of(repeats, *fns):
    """Interleaved runs; (min seconds, last result) per function."""
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(min(t), r) for t, r in zip(times, results, strict=True)]


def peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 queries per row (~20 s)")
    ap.add_argument("--n-query", type=int, default=None, help="queries per row (default 2000)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 3, quick 2)")
    ap.add_argument("--data", type=Path, default=DATA, help=f"Fashion-MNIST IDX directory (default {DATA})")
    ap.add_argument(
        "--json", type=Path, default=None, help="also write the rows here, with the machine (docs/performance.md)"
    )
    a = ap.parse_args()
    n_query = a.n_query or (300 if a.quick else 2000)
    repeats = a.repeats or (2 if a.quick else 3)

    t0 = time.perf_counter()
    sets = feature_sets(a.data, n_query)
    print(
        f"# Fashion-MNIST: {len(sets[784][0])} train rows, {n_query} queries per row, best of {repeats} "
        f"(features and neighbors ready in {time.perf_counter() - t0:.1f} s); stage engine: "
        f"{'compiled' if compiled.available() else 'numpy (numba not installed)'}",
        file=sys.stderr,
    )
    rows = []
    header = (
        f"{'k':>4} {'d':>4} {'queries':>7} | {'nnk_solve q/s':>13} {'scipy q/s':>9} {'ratio':>6} "
        f"{'peak MiB':>8} {'KKT ours':>8} {'KKT scipy':>9} | {'e2e ours':>8} {'e2e scipy':>9} {'ratio':>6} | "
        f"{'stage q/s':>9} {'numpy q/s':>9} {'paper q/s':>9} {'ratio':>6} {'KKT stage':>9} {'KKT paper':>9}"
    )
    print(header)
    print("-" * len(header))
    for d, (train, query) in sets.items():
        nbr = neighbors(train, query, max(KS))
        for k in KS:
            X = train[nbr[:, :k]]  # (n, k, d) float32
            G, g = kernel_blocks(query, X)
            # partial binds this iteration's arrays (each is called before the loop moves on)
            (t_ours, ours), (t_scipy, theirs) = best_of(repeats, partial(nnk_solve, G, g), partial(scipy_solver, G, g))
            (e_ours, _), (e_scipy, _) = best_of(
                repeats, partial(nnk_weights, query, X), partial(scipy_end_to_end, query, X)
            )
            sims = np.einsum("bkd,bd->bk", X, query, dtype=np.float64)
            (s_ours, stage), (s_numpy, _), (s_paper, paper) = best_of(
                repeats,
                partial(our_stage, query, X, sims),
                partial(numpy_stage, query, X, sims),
                partial(paper_loop, query, X),
            )
            peak = peak_mib(partial(nnk_solve, G, g))
            row = dict(
                k=k,
                d=d,
                n_queries=n_query,
                ours_qps=n_query / t_ours,
                scipy_qps=n_query / t_scipy,
                ratio=t_scipy / t_ours,
                peak_mib=peak,
                kkt_ours=kkt(G, g, ours.theta),
                kkt_scipy=kkt(G, g, theirs),
                fallbacks=int(ours.fallback.sum()),
                e2e_ours_qps=n_query / e_ours,
                e2e_scipy_qps=n_query / e_scipy,
                e2e_ratio=e_scipy / e_ours,
                stage_qps=n_query / s_ours,
                stage_numpy_qps=n_query / s_numpy,
                paper_qps=n_query / s_paper,
                stage_ratio=s_paper / s_ours,
                kkt_stage=kkt(G, g, stage.theta),
                kkt_paper=kkt(G, g, paper),
            )
            rows.append(row)
            print(
                f"{k:>4} {d:>4} {n_query:>7} | {row['ours_qps']:>13,.0f} {row['scipy_qps']:>9,.0f} "
                f"{row['ratio']:>5.1f}x {peak:>8.1f} {row['kkt_ours']:>8.0e} {row['kkt_scipy']:>9.0e} | "
                f"{row['e2e_ours_qps']:>8,.0f} {row['e2e_scipy_qps']:>9,.0f} {row['e2e_ratio']:>5.1f}x | "
                f"{row['stage_qps']:>9,.0f} {row['stage_numpy_qps']:>9,.0f} {row['paper_qps']:>9,.0f} "
                f"{row['stage_ratio']:>5.1f}x "
                f"{row['kkt_stage']:>9.0e} {row['kkt_paper']:>9.0e}",
                flush=True,
            )
    print(f"# total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if a.json:
        engine = "compiled" if compiled.available() else "numpy"
        write_json(a.json, "bench_solver", {"n_query": n_query, "repeats": repeats, "engine": engine, "rows": rows})


if __name__ == "__main__":
    main()
