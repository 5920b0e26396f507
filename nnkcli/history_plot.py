"""The history figure: best top-1 over checkpoints, one line per method.

matplotlib (the ``plot`` extra) is imported inside ``plot_history`` only, with the
non-interactive Agg backend, so cron jobs without a display can draw it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nnkcli.storage.atomic import atomic_output
from nnkcli.errors import InputError, MissingDependencyError

PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_STYLE = {"nnk": ("tab:blue", "o"), "knn": ("tab:orange", "s")}
_LABELS = {"nnk": "NNK", "knn": "kNN"}
_MAX_TICK_LABELS = 20


def plot_history(
    rows: Sequence[dict],
    path: str | os.PathLike,
    *,
    methods: Sequence[str] = ("nnk", "knn"),
    title: str | None = None,
) -> Path:
    """Draw best top-1 per source for each method and write it atomically to ``path``.

    Parameters
    ----------
    rows : sequence of dict
        ``nnkcli.tracking.views.history_rows`` output, in training order.
    path : path-like
        ``.png``, ``.svg`` or ``.pdf``.
    methods : sequence of str
        Methods to draw (those with no value in any row are left out).
    title : str, optional

    The x axis is the step when every row has one, else the row's position with
    source names as tick labels. The best source of each method is ringed and
    labelled with its top-1 and k; each point's interval (``m_top1_ci``) is an error bar.
    """
    path = Path(path)
    fmt = PLOT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"--plot must end in .png, .svg or .pdf, got {path.name!r}")
    if not path.parent.is_dir():
        raise InputError(f"the directory of --plot does not exist: {path.parent}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot", "plot") from None

    by_step = bool(rows) and all(isinstance(r.get("step"), int) for r in rows)
    xs = [r["step"] for r in rows] if by_step else list(range(1, len(rows) + 1))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    try:
        for m in methods:
            points = [(x, r[f"{m}_top1"], r.get(f"{m}_k"), m in r.get("best", "").split())
                      for x, r in zip(xs, rows) if r.get(f"{m}_top1") is not None]
            if not points:
                continue
            color, marker = _STYLE.get(m, (None, "^"))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color,
                    label=_LABELS.get(m, m), linewidth=1.5, markersize=5)
            # the interval of each best top-1 as an error bar (rows recorded before intervals have none)
            bars = [(x, r[f"{m}_top1"], r.get(f"{m}_top1_ci")) for x, r in zip(xs, rows)
                    if r.get(f"{m}_top1") is not None and isinstance(r.get(f"{m}_top1_ci"), list)
                    and None not in r[f"{m}_top1_ci"]]
            if bars:
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                            yerr=[[b[1] - b[2][0] for b in bars], [b[2][1] - b[1] for b in bars]],
                            fmt="none", ecolor=color, elinewidth=1, capsize=3, alpha=0.7)
            for x, y, k, is_best in points:
                if is_best:
                    ax.scatter([x], [y], s=180, facecolors="none", edgecolors=color, linewidths=1.8, zorder=3)
                    ax.annotate(f"best {y:.2f} (k={k})", (x, y), textcoords="offset points", xytext=(0, 10),
                                ha="center", fontsize=8, color=color)
        ax.set_xlabel("step" if by_step else "source (training order)")
        if not by_step and rows:
            every = -(-len(rows) // _MAX_TICK_LABELS)  # thin out the names of long histories
            ax.set_xticks(xs[::every])
            ax.set_xticklabels([r["source"] for r in rows][::every], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("best top-1 accuracy (%)")
        ax.set_title(title or "top-1 over checkpoints")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(loc="lower right")
            ax.margins(y=0.15)
        fig.tight_layout()
        with atomic_output(path, what="plot") as tmp:
            fig.savefig(tmp, format=fmt)
    finally:
        plt.close(fig)
    return path
