"""Parts of the history figure drawn on axes they are given: the quality panels and the best labels.

Kept apart from ``nnkcli.plots`` (which makes the figures and calls these) so that each module
reads in one sitting. Nothing here imports matplotlib: the axes come from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

#: axis label of each quality metric, with the direction in which it improves
QUALITY_AXIS_LABELS = {
    "rankme": "RankMe\n(higher is better)",
    "alpha_req": "alpha-ReQ\n(closer to 1 is better)",
    "nnk_interpolation_error": "NNK interpolation\nerror (lower is better)",
    "loo_nnk_top1": "leave-one-out\nNNK top-1 %",
    "loo_knn_top1": "leave-one-out\nk-NN top-1 %",
}
_QUALITY_COLOR = "tab:green"


def draw_quality_panels(axes: Sequence, xs: Sequence, rows: Sequence[dict], metrics: Sequence[str]) -> None:
    """One panel per quality metric: its value per row (``history_rows``) at ``xs``; rows without it skipped."""
    for ax, metric in zip(axes, metrics, strict=True):
        points = [(x, r[metric]) for x, r in zip(xs, rows, strict=True) if r.get(metric) is not None]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="D",
            color=_QUALITY_COLOR,
            linewidth=1.5,
            markersize=4,
        )
        ax.set_ylabel(QUALITY_AXIS_LABELS.get(metric, metric), fontsize=8)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.margins(x=0.05, y=0.15)


def say_no_top1(ax) -> None:
    """Say in the top-1 panel that no entry has a top-1 (every query split without labels)."""
    ax.text(
        0.5,
        0.5,
        "no top-1 recorded: query splits without labels",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="0.4",
    )


def label_best_points(ax, texts: Sequence[tuple]) -> list:
    """Annotate each ``(x, y, text, color)`` beside its point, away from the nearer side; returns the texts.

    Beside the ring, not above it: the point's error bar runs up through anything placed above.
    """
    lo, hi = ax.get_xlim()
    notes = []
    for x, y, text, color in texts:
        right_half = (x - lo) > 0.55 * (hi - lo)
        notes.append(
            ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(-10 if right_half else 10, 0),
                ha="right" if right_half else "left",
                va="center",
                fontsize=8,
                color=color,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                zorder=6,
            )
        )
    return notes
