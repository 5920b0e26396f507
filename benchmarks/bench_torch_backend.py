"""The torch backend (search, re-ranking, voting and NNK solve on a torch device) against the faiss path.

Builds a seeded synthetic store (default 20,000 x 128 float32 train rows, 50 classes,
2,000 queries; the curved-manifold mixture of ``bench_pipeline.py``) and times, interleaved
and repeated (the minimum of each is reported):

    classify --k 50 (nnk + knn)      --backend faiss   vs  --backend torch --device D
    sweep --k 10..100:10             --backend faiss   vs  --backend torch --device D

D is ``cpu`` (the GPU code path run on the CPU, which is all this machine can do) and,
when torch sees a GPU, also ``cuda``. Both paths must give the same accuracies to 0.05
points (checked); the ratio printed is torch time / faiss time of the same round.

Usage:
    python benchmarks/bench_torch_backend.py                 # 20,000 train rows, 2,000 queries
    python benchmarks/bench_torch_backend.py --quick         # 5,000 x 64, 500 queries
    python benchmarks/bench_torch_backend.py --threads 1 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    args = ap.parse_args()
    n_train, n_query, dim = (5_000, 500, 64) if args.quick else (20_000, 2_000, 128)

    import torch

    from nnkcli import classify, sweep

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = {
        "classify k=50": lambda **kw: classify(store, k=50, threads=args.threads, **kw),
        "sweep k=10..100": lambda **kw: sweep(store, k="10..100:10", threads=args.threads, **kw).to_dict(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.h5"
        make_store(store, n_train, n_query, dim, n_classes=50, seed=0)
        print(
            f"{n_train} x {dim} train rows, {n_query} queries, threads={args.threads}, "
            f"torch {torch.__version__}, devices {devices}"
        )
        best: dict = {}
        docs: dict = {}
        for _ in range(args.repeat):  # interleaved: a busy spell hits both sides of a ratio alike
            for name, fn in runs.items():
                for backend in ["faiss", *devices]:
                    kw = {} if backend == "faiss" else {"backend": "torch", "device": backend}
                    t0 = time.perf_counter()
                    doc = fn(**kw)
                    seconds = time.perf_counter() - t0
                    key = (name, backend)
                    best[key] = min(best.get(key, float("inf")), seconds)
                    docs[key] = doc
        for name in runs:
            base = best[(name, "faiss")]
            print(f"{name:18s} faiss {base:7.2f} s")
            for device in devices:
                a, b = docs[(name, "faiss")]["results"], docs[(name, device)]["results"]
                pairs = zip(a, b, strict=True)
                gap = max(max(abs(x["top1"] - y["top1"]), abs(x["top5"] - y["top5"])) for x, y in pairs)
                assert gap <= 0.05, f"{name} on {device}: accuracies differ by {gap} points"
                t = best[(name, device)]
                fallbacks = docs[(name, device)]["timing"].get("nnk_fallbacks")
                print(
                    f"{'':18s} torch {device:4s} {t:7.2f} s   ratio {t / base:5.2f}   "
                    f"max accuracy gap {gap:.3f} points, NNK fallbacks {fallbacks}"
                )
    if args.json:
        from _report import write_json

        rows = [{"run": name, "backend": backend, "seconds": s} for (name, backend), s in best.items()]
        write_json(args.json, "bench_torch_backend", {"n_train": n_train, "n_query": n_query, "dim": dim, "best": rows})


if __name__ == "__main__":
    main()
