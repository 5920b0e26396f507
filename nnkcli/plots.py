"""Figures (matplotlib, the optional ``plot`` extra): top-1 versus k."""

from __future__ import annotations

import os
from pathlib import Path

from nnkcli.storage.atomic import atomic_output, check_can_create
from nnkcli.errors import InputError, MissingDependencyError

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_LABELS = {"nnk": "NNK", "knn": "weighted k-NN"}


def check_plot_path(path: str | os.PathLike) -> None:
    """Validate the suffix, the directory and that matplotlib is importable."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"cannot plot to {path}: unknown file type {path.suffix or '(none)'!r}",
                         hint="use a .png, .svg or .pdf file name")
    if not path.parent.is_dir():
        raise InputError(f"directory of --plot does not exist: {path.parent}")
    check_can_create(path, "plot")
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot", "plot") from None
    return plt


def plot_sweep(doc: dict, path: str | os.PathLike) -> Path:
    """Top-1 accuracy versus k for each method, its interval as a band, the best k marked; written atomically."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        for method in doc["parameters"]["methods"]:
            rows = [r for r in doc["results"] if r["method"] == method]
            ks = [r["k"] for r in rows]
            top1 = [r["top1"] for r in rows]
            (line,) = ax.plot(ks, top1, marker="o", markersize=3, label=_LABELS.get(method, method))
            band = [r.get("top1_ci") for r in rows]
            if band and all(isinstance(b, (list, tuple)) and len(b) == 2 and None not in b for b in band):
                ax.fill_between(ks, [b[0] for b in band], [b[1] for b in band], color=line.get_color(),
                                alpha=0.15, linewidth=0)
            best = doc.get("best", {}).get(method)
            if best:
                ax.scatter([best["k"]], [best["top1"]], s=60, facecolors="none", edgecolors=line.get_color(),
                           zorder=3)
                ax.annotate(f"{best['top1']:.2f}% @ k={best['k']}", (best["k"], best["top1"]),
                            textcoords="offset points", xytext=(4, 6), fontsize=8, color=line.get_color())
        ax.set_xlabel("k (neighbours)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{Path(doc['store']).name}: {doc['query_split']} vs {doc['train_split']}", fontsize=10)
        ax.margins(x=0.04, y=0.12)  # room for the best-k labels
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_output(path, what="plot") as tmp:
            fig.savefig(tmp, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    return path
