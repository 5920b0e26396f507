"""Figures (matplotlib, the optional ``plot`` extra): top-1 versus k, and top-1 over checkpoints.

The only module that imports matplotlib, inside the functions only and with the
non-interactive Agg backend, so cron jobs without a display can draw. Every figure is
drawn for a paper: one line per (method, temperature), the interval named in the
legend, the k chosen without looking at the reported split marked beside the
optimistic best, labels kept inside the axes, and text kept as text in ``.svg`` and
``.pdf`` (no glyph outlines, no Type 3 fonts, which several submission systems refuse).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.numerics.scores import METHODS
from nnkcli.numerics.stats import DEFAULT_CONFIDENCE
from nnkcli.storage.atomic import atomic_output, check_can_create

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
#: one name per method in every figure
LABELS = {"nnk": "NNK", "knn": "weighted k-NN"}
_STYLE = {"nnk": ("tab:blue", "o"), "knn": ("tab:orange", "s")}
_MAX_TICK_LABELS = 20
_HINT = "write one with: nnk sweep STORE --format json > FILE.json"


def check_plot_path(path: str | os.PathLike) -> None:
    """Validate the suffix, the directory and that matplotlib is importable."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(
            f"cannot plot to {path}: unknown file type {path.suffix or '(none)'!r}",
            hint="use a .png, .svg or .pdf file name",
        )
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


@contextmanager
def _figure(path: Path, figsize: tuple[float, float], panels: int = 1) -> Iterator[tuple]:
    """A figure and its axes for a paper (text kept as text), written atomically to ``path`` when the block ends.

    ``panels`` > 1: a column of axes sharing x (a list, top first) instead of one axes.
    """
    plt = _pyplot()
    import matplotlib

    # text as text (no glyph outlines, TrueType not Type 3); read when the file is saved: save inside
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}):
        fig, axes = plt.subplots(panels, 1, figsize=figsize, dpi=120, sharex=panels > 1, squeeze=False)
        try:
            yield fig, (axes[0, 0] if panels == 1 else list(axes[:, 0]))
            with atomic_output(path, what="plot") as tmp:
                fig.savefig(tmp, format=path.suffix.lower().lstrip("."))
        finally:
            plt.close(fig)


def _percent_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g} %"))


def _interval_name(confidences: Sequence[float]) -> str:
    levels = sorted({round(100 * c, 4) for c in confidences}) or [100 * DEFAULT_CONFIDENCE]
    return " / ".join(f"{level:g} %" for level in levels) + " Wilson interval"


def keep_inside(fig, ax, texts: Sequence, *, away: Sequence[int] = ()) -> None:
    """Move annotations (offset in points) so that each lies inside the axes and off the ones before it.

    ``away[i]`` is +1 to move text ``i`` up when it overlaps an earlier one, -1 down.
    Call after the layout is final (``tight_layout``).
    """
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_points = 72.0 / fig.dpi
    placed: list = []
    for i, text in enumerate(texts):
        for _ in range(8):
            box = text.get_window_extent(renderer)
            dx = max(0.0, frame.x0 + 2 - box.x0) - max(0.0, box.x1 - frame.x1 + 2)
            dy = max(0.0, frame.y0 + 2 - box.y0) - max(0.0, box.y1 - frame.y1 + 2)
            hit = next((p for p in placed if box.overlaps(p)), None)
            if hit is not None and dy == 0:
                dy = hit.y1 - box.y0 + 2 if (away[i] if i < len(away) else 1) > 0 else -(box.y1 - hit.y0 + 2)
            if dx == 0 and dy == 0:
                break
            x, y = text.xyann
            text.xyann = (x + dx * to_points, y + dy * to_points)
        placed.append(text.get_window_extent(renderer))


# ---------------------------------------------------------------- top-1 versus k


@dataclass
class SweepLine:
    """One line of a sweep figure: one method at one temperature of one sweep document."""

    method: str
    temperature: float | None
    label: str
    ks: list[int] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    ci: list = field(default_factory=list)
    best: dict | None = None
    selected: dict | None = None


def _same_t(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-12 * max(1, abs(a)))


def sweep_lines(doc: dict, name: str | None = None) -> list[SweepLine]:
    """The lines of a sweep document: one per (method, temperature), T in the label when it has one.

    ``best`` and ``selected`` (``--select-on``) of a method go to the line of their temperature.
    """
    methods = list(doc.get("parameters", {}).get("methods") or [])
    methods += [r["method"] for r in doc["results"] if r["method"] not in methods]
    lines = []
    for method in methods:
        rows = [r for r in doc["results"] if r["method"] == method]
        temps = sorted({r.get("temperature") for r in rows}, key=lambda t: -1.0 if t is None else t)
        for t in temps:
            these = sorted((r for r in rows if _same_t(r.get("temperature"), t)), key=lambda r: r["k"])
            label = LABELS.get(method, method) + ("" if t is None else f", T = {t:g}")
            line = SweepLine(method, t, f"{name}: {label}" if name else label)
            line.ks = [r["k"] for r in these]
            line.top1 = [r["top1"] for r in these]
            line.ci = [r.get("top1_ci") for r in these]
            for attr in ("best", "selected"):
                point = (doc.get(attr) or {}).get(method)
                if point and _same_t(point.get("temperature"), t):
                    setattr(line, attr, point)
            lines.append(line)
    return lines


def _default_sweep_title(docs: Sequence[dict]) -> str:
    def shape(d):
        return f"{d['query_split']}: {d['n_queries']:,} queries, {d['train_split']}: {d['n_train']:,} rows"

    if len(docs) == 1:
        return f"{Path(docs[0]['store']).name} \N{EM DASH} {shape(docs[0])}"
    shapes = {shape(d) for d in docs}
    return "top-1 vs k \N{EM DASH} " + (shapes.pop() if len(shapes) == 1 else f"{len(docs)} sweeps")


def plot_sweep(doc: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Top-1 accuracy versus k of one sweep document (``SweepResult.to_dict()``), written atomically.

    One line per (method, T), its interval as a band; the best k of each method on the
    query split ringed and labelled (optimistic), the k selected on train (``--select-on``)
    marked with a diamond and labelled "selected on train". ``title`` defaults to the
    store, the query split and the sizes.
    """
    return plot_sweeps([doc], path, title=title)


def plot_sweeps(
    docs: Sequence[dict],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Several sweep documents (checkpoints, stores) on one axes; see :func:`plot_sweep`.

    With more than one document each line is named ``LABEL: method, T`` (``labels``,
    default: the store's file name) and the marks are explained in the legend only.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    if labels is not None and len(labels) != len(docs):
        raise ValueError(f"{len(labels)} labels for {len(docs)} sweep documents")
    names = list(labels) if labels is not None else [Path(d["store"]).name for d in docs]
    one = len(docs) == 1
    lines = [ln for d, n in zip(docs, names, strict=True) for ln in sweep_lines(d, None if one else n)]
    many_t = len({ln.temperature for ln in lines if ln.method == "knn"}) > 1
    outside = len(lines) > 4  # a long legend goes beside the axes, off the data
    with _figure(path, (9.0 if outside else 6.8, 4.6)) as (fig, ax):
        handles, notes = [], []
        colors = iter(_colors(len(lines)))
        alpha = 0.15 if len(lines) <= 2 else 0.08  # overlapping bands stay tellable apart
        banded = False
        for ln in lines:
            color = next(colors)
            (drawn,) = ax.plot(
                ln.ks,
                ln.top1,
                marker=_STYLE.get(ln.method, (None, "^"))[1],
                ls="-" if ln.method == "nnk" else "--",  # the methods apart in grey print and across documents
                markersize=3.5,
                color=color,
                label=ln.label,
            )
            handles.append(drawn)
            if ln.ci and all(isinstance(b, (list, tuple)) and len(b) == 2 and None not in b for b in ln.ci):
                ax.fill_between(ln.ks, [b[0] for b in ln.ci], [b[1] for b in ln.ci], color=color, alpha=alpha, lw=0)
                banded = True
            t = f", T = {ln.temperature:g}" if many_t and ln.temperature is not None else ""
            sel, best = ln.selected, ln.best
            same = sel is not None and best is not None and sel["k"] == best["k"]
            if best is not None:
                ax.scatter([best["k"]], [best["top1"]], s=90, facecolors="none", edgecolors=color, lw=1.5, zorder=4)
            if sel is not None:
                ax.scatter([sel["k"]], [sel["top1"]], s=45, marker="D", color=color, edgecolors="black", zorder=5)
            if not one:
                continue
            split = docs[0]["query_split"]
            on = (docs[0].get("selection") or {}).get("split", "train")
            if sel is not None:
                what = f"selected on {on}" + (f" (also best on {split})" if same else "")
                notes.append((sel, f"{what}: {sel['top1']:.2f} % (k={sel['k']}{t})", color, True))
            if best is not None and not same:
                note = " (optimistic)" if docs[0].get("selected") else ""  # beside a selection on train
                notes.append((best, f"best on {split}{note}: {best['top1']:.2f} % (k={best['k']}{t})", color, False))
        split = docs[0]["query_split"] if len({d["query_split"] for d in docs}) == 1 else "the query split"
        if any(ln.best for ln in lines):
            handles.append(_mark(Line2D, "o", f"best k on {split} (optimistic)", filled=False))
        if any(ln.selected for ln in lines):
            handles.append(_mark(Line2D, "D", "k selected on train (to report)", filled=True))
        if banded:
            confidences = [d.get("parameters", {}).get("confidence", DEFAULT_CONFIDENCE) for d in docs]
            handles.append(Patch(facecolor="0.55", alpha=0.3, lw=0, label=_interval_name(confidences)))
        ax.set_xlabel("k (neighbors)")
        ax.set_ylabel(f"top-1 accuracy on {split}")
        _percent_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_title(title if title is not None else _default_sweep_title(docs), fontsize=10)
        ax.margins(x=0.04, y=0.15)  # room for the labels above the best and below the selected
        ax.grid(True, alpha=0.3)
        if outside:
            ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        else:
            ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
        fig.tight_layout()
        # labelled once the limits are final: the side of each label depends on where its point lies
        texts = [_label(ax, point, text, color, below=below) for point, text, color, below in notes]
        keep_inside(fig, ax, texts, away=[-1 if below else 1 for *_, below in notes])
    return path


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _label(ax, point: dict, text: str, color, *, below: bool = False):
    """A label beside ``point``, on the side with room (right of it in the left part of the axes)."""
    lo, hi = ax.get_xlim()
    right_half = (point["k"] - lo) > 0.55 * (hi - lo)
    return ax.annotate(
        text,
        (point["k"], point["top1"]),
        textcoords="offset points",
        xytext=(-6 if right_half else 6, -11 if below else 7),
        ha="right" if right_half else "left",
        va="top" if below else "bottom",
        fontsize=8,
        color=color,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        zorder=6,
    )


def _mark(line2d, marker: str, label: str, *, filled: bool):
    return line2d([], [], ls="none", marker=marker, ms=7, mfc="0.35" if filled else "none", mec="0.2", label=label)


def read_sweep_document(path: str | os.PathLike) -> dict:
    """A sweep document saved with ``nnk sweep ... --format json``, checked enough to draw.

    Raises ``InputError`` naming the file when it cannot be read, is not JSON or not a sweep.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such file: {path}", hint=_HINT) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a sweep JSON document", hint=_HINT) from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a sweep JSON document: not UTF-8 text", hint=_HINT) from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not a sweep JSON document: not JSON ({exc.msg} at line {exc.lineno})", hint=_HINT
        ) from None
    problem = _sweep_problem(doc)
    if problem:
        raise InputError(f"{path} is not a sweep JSON document: {problem}", hint=_HINT)
    return doc


def _sweep_problem(doc) -> str | None:
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    kinds = {"store": str, "query_split": str, "train_split": str, "n_queries": int, "n_train": int, "results": list}
    for key, kind in kinds.items():
        if not isinstance(doc.get(key), kind):
            return f"no {key!r}" if key not in doc else f"{key!r} is not a {kind.__name__}"
    if not doc["results"]:
        return "no results"
    for i, row in enumerate(doc["results"]):
        ok = (
            isinstance(row, dict)
            and isinstance(row.get("method"), str)
            and isinstance(row.get("k"), int)
            and isinstance(row.get("top1"), (int, float))
            and isinstance(row.get("temperature", 0.0), (int, float, type(None)))
        )
        if not ok:
            return f"result {i + 1} lacks a method, an integer k or a numeric top1"
    for key in ("best", "selected", "parameters"):
        if not isinstance(doc.get(key, {}), dict):
            return f"{key!r} is not an object"
    return None


def _document_names(paths: Sequence[Path], docs: Sequence[dict]) -> list[str]:
    """The store's file name; the JSON file's name where two stores share a name."""
    names = [Path(d["store"]).name for d in docs]
    if len(set(names)) < len(names):
        names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def plot_sweep_files(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Read saved sweep documents (``nnk sweep ... --format json``) and draw them on one axes to ``out``."""
    files = [Path(p) for p in paths]
    docs = [read_sweep_document(p) for p in files]
    return plot_sweeps(docs, out, labels=list(labels) if labels else _document_names(files, docs), title=title)


# ---------------------------------------------------------------- top-1 over checkpoints


def plot_history(
    rows: Sequence[dict],
    path: str | os.PathLike,
    *,
    methods: Sequence[str] = METHODS,
    title: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    quality_metrics: Sequence[str] = (),
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
    confidence : float, default=0.95
        Level of the intervals recorded in ``rows``, named in the legend.
    quality_metrics : sequence of str, default=()
        Quality metrics of ``rows`` (``nnk evaluate --quality``), each drawn in a panel below
        the top-1's, sharing its x axis; none: the top-1 figure alone.

    The x axis is the step when every row has one, else the row's position with
    source names as tick labels. The best source of each method is ringed and
    labelled with its top-1 and k beside the point (never across its error bar);
    each point's interval (``m_top1_ci``) is an error bar.
    """
    path = Path(path)
    check_plot_path(path)

    by_step = bool(rows) and all(isinstance(r.get("step"), int) for r in rows)
    xs = [r["step"] for r in rows] if by_step else list(range(1, len(rows) + 1))
    from nnkcli.plots_panels import draw_quality_panels, label_best_points, say_no_top1

    panels = 1 + len(quality_metrics)
    with _figure(path, (7.5, 4.5 + 2.0 * len(quality_metrics)), panels) as (fig, axes):
        ax, bottom = (axes, axes) if panels == 1 else (axes[0], axes[-1])
        texts, any_bars = [], False
        for m in methods:
            points = [
                (x, r[f"{m}_top1"], r.get(f"{m}_k"), m in r.get("best", "").split())
                for x, r in zip(xs, rows, strict=True)
                if r.get(f"{m}_top1") is not None
            ]
            if not points:
                continue
            color, marker = _STYLE.get(m, (None, "^"))
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker=marker,
                color=color,
                label=LABELS.get(m, m),
                linewidth=1.5,
                markersize=5,
            )
            # the interval of each best top-1 as an error bar (rows recorded before intervals have none)
            bars = [
                (x, r[f"{m}_top1"], r[f"{m}_top1_ci"])
                for x, r in zip(xs, rows, strict=True)
                if r.get(f"{m}_top1") is not None
                and isinstance(r.get(f"{m}_top1_ci"), list)
                and None not in r[f"{m}_top1_ci"]
            ]
            if bars:
                any_bars = True
                ax.errorbar(
                    [b[0] for b in bars],
                    [b[1] for b in bars],
                    yerr=[[b[1] - b[2][0] for b in bars], [b[2][1] - b[1] for b in bars]],
                    fmt="none",
                    ecolor=color,
                    elinewidth=1,
                    capsize=3,
                    alpha=0.7,
                )
            for x, y, k, is_best in points:
                if is_best:
                    ax.scatter([x], [y], s=180, facecolors="none", edgecolors=color, linewidths=1.8, zorder=3)
                    texts.append((x, y, f"best {y:.2f} % (k={k})", color))
        if panels > 1:
            draw_quality_panels(axes[1:], xs, rows, quality_metrics)
            if not ax.has_data():
                say_no_top1(ax)
        bottom.set_xlabel("step" if by_step else "source (training order)")
        if not by_step and rows:
            every = -(-len(rows) // _MAX_TICK_LABELS)  # thin out the names of long histories
            bottom.set_xticks(xs[::every])
            bottom.set_xticklabels([r["source"] for r in rows][::every], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("best top-1 accuracy")
        _percent_axis(ax)
        ax.set_title(title or "top-1 over checkpoints")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.margins(x=0.05, y=0.15)
            handles, _ = ax.get_legend_handles_labels()
            if any_bars:
                from matplotlib.lines import Line2D

                handles.append(
                    Line2D(
                        [],
                        [],
                        color="0.3",
                        marker="|",
                        ms=9,
                        ls="none",
                        label="error bars: " + _interval_name([confidence]),
                    )
                )
            ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9)
        fig.tight_layout()
        keep_inside(fig, ax, label_best_points(ax, texts))
    return path
