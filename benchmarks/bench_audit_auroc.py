"""How well ``nnk audit`` finds flipped labels, beside the k-NN vote and cleanlab, on Fashion-MNIST.

The self-test of ``nnk audit --inject-noise RATE`` flips a seeded share of the train labels
(symmetric noise: each flipped row gets a uniformly chosen *other* class) and scores how well
``1 - reliability`` ranks the flipped rows first: AUROC (Mann-Whitney) and the precision among
the ``m`` least reliable rows (``m`` = the flipped count). It reports the same for the leave-one-out
k-NN vote (the share of the k neighbors that carry the row's label).

This script adds cleanlab's label-quality score (``cleanlab.rank.get_label_quality_scores``,
self-confidence) on the *same* flipped labels, from out-of-sample predicted probabilities: a
5-fold cross-validated multinomial logistic regression on the same features (cleanlab's
documented workflow). cleanlab is a benchmark-only dependency, not nnkcli's:

    pip install cleanlab            # its column is skipped (with a note) when it is missing

Stores: the packaged sample (``nnkcli.data.SAMPLE_STORE``: 10,000 train rows, PCA-64 pixel
features) by default; ``--dataset fashion-mnist`` for Debian's raw pixels (60,000 x 784; the
dataset-fashion-mnist package, or ``--data DIR``).

Usage:
    python benchmarks/bench_audit_auroc.py                      # the sample store, seeds 0..4
    python benchmarks/bench_audit_auroc.py --dataset fashion-mnist --seeds 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine
from bench_pipeline import FASHION, make_fashion_store


def cleanlab_auroc(features: np.ndarray, noisy: np.ndarray, flipped: np.ndarray, seed: int) -> dict | None:
    """cleanlab's self-confidence AUROC and precision at the flipped count, or None without cleanlab."""
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from nnkcli.evaluation.audit import auroc, precision_at

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)  # the audit's geometry
    model = LogisticRegression(C=10.0, max_iter=500)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, noisy, cv=folds, method="predict_proba")
    quality = get_label_quality_scores(noisy, probs, method="self_confidence")
    m = int(flipped.sum())
    rows = np.arange(len(noisy))
    return {
        "auroc": round(auroc(1.0 - quality, flipped), 6),
        "precision_at_flipped": round(precision_at(np.lexsort((rows, quality)), flipped, m), 6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("sample", "fashion-mnist"), default="sample")
    ap.add_argument("--data", type=Path, default=FASHION, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.1, help="share of train labels flipped")
    ap.add_argument("--seeds", type=int, default=5, help="noise seeds 0..N-1 (the mean is reported)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here, with the machine")
    a = ap.parse_args()

    from nnkcli import FeatureStore
    from nnkcli.data import SAMPLE_STORE
    from nnkcli.evaluation.audit import audit

    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        if a.dataset == "sample":
            store = Path(SAMPLE_STORE)
        else:
            store = Path(tmp) / "fashion-mnist.h5"
            ctx = multiprocessing.get_context("spawn")
            maker = ctx.Process(target=make_fashion_store, args=(store, a.data, 10_000))
            maker.start()
            maker.join()
            if maker.exitcode != 0:
                raise SystemExit("making the Fashion-MNIST store failed")
        fs = FeatureStore(store)
        features = np.asarray(fs.split("train").read(), dtype=np.float64)
        fs.close()

        per_seed: list[dict] = []
        for seed in range(a.seeds):
            t0 = time.perf_counter()
            result = audit(store, split="train", k=a.k, inject_noise=a.rate, noise_seed=seed)
            audit_s = time.perf_counter() - t0
            test = result.document["self_test"]
            order = np.argsort(result.rows)
            flipped = np.asarray(result.flipped)[order]
            noisy = np.asarray(result.labels)[order]
            t0 = time.perf_counter()
            cl = cleanlab_auroc(features[np.sort(result.rows)], noisy, flipped, seed)
            cleanlab_s = time.perf_counter() - t0
            entry = {
                "seed": seed,
                "flipped": test["flipped"],
                "nnk": {key: test["nnk"][key] for key in ("auroc", "precision_at_flipped")},
                "knn": {key: test["knn"][key] for key in ("auroc", "precision_at_flipped")},
                "cleanlab": cl,
                "audit_s": round(audit_s, 3),
                "cleanlab_s": round(cleanlab_s, 3),
            }
            per_seed.append(entry)
            line = "  ".join(
                f"{name} {entry[name]['auroc']:.3f}" for name in ("nnk", "knn", "cleanlab") if entry[name] is not None
            )
            print(f"  seed {seed}: AUROC  {line}   ({audit_s:.1f}s audit, {cleanlab_s:.1f}s cleanlab)", file=sys.stderr)

    methods = ["nnk", "knn"] + (["cleanlab"] if per_seed[0]["cleanlab"] is not None else [])
    means = {
        name: {
            key: round(float(np.mean([s[name][key] for s in per_seed])), 4) for key in ("auroc", "precision_at_flipped")
        }
        for name in methods
    }
    print(f"CPU: {host['cpu_model']} ({host['cores_available']} cores available)")
    print(
        f"{'sample store (PCA-64)' if a.dataset == 'sample' else 'Fashion-MNIST raw pixels'}: {len(features):,} train "
        f"rows, {a.rate:.0%} symmetric noise, k={a.k}; mean of {a.seeds} noise seeds"
    )
    print(f"  {'method':<38} {'AUROC':>7} {'precision@flipped':>18}")
    labels = {
        "nnk": "NNK reliability (nnk audit)",
        "knn": "k-NN vote share (leave-one-out)",
        "cleanlab": "cleanlab self-confidence (5-fold LR)",
    }
    for name in methods:
        print(f"  {labels[name]:<38} {means[name]['auroc']:7.4f} {means[name]['precision_at_flipped']:18.4f}")
    if "cleanlab" not in methods:
        print("  (cleanlab is not installed: pip install cleanlab to add its column)")
    if a.json:
        from _report import write_json

        write_json(
            a.json,
            "bench_audit_auroc",
            {"dataset": a.dataset, "k": a.k, "rate": a.rate, "seeds": per_seed, "mean": means},
        )


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f}s in all)", file=sys.stderr)
