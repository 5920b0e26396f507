"""Figures a reader can trust: one line per (method, T), the selection on train marked, labels inside
the axes, the interval named, a title that says what is shown, and text kept as text in SVG and PDF."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import pytest

pytest.importorskip("matplotlib")

from nnkcli.errors import InputError
from nnkcli.plots import plot_history, plot_sweep, plot_sweep_files, plot_sweeps, sweep_lines

KS = [1, 5, 10, 20, 50]
TEMPS = [0.02, 0.07, 0.2]


def row(method, k, top1, t=None, half=1.5):
    r = {"method": method, "k": k, "top1": top1, "top1_ci": [top1 - half, top1 + half], "top5": 99.0}
    if t is not None:
        r["temperature"] = t
    return r


def sweep_doc(*, best_last=False, select=False, confidence=0.95, store="runs/feats.h5"):
    """A sweep document as ``SweepResult.to_dict()`` writes it: NNK without T, weighted k-NN at three T."""
    nnk = [80.0, 83.0, 84.0, 84.5, 85.0 if best_last else 84.2]
    # each temperature its own level: drawn as one line, these would zigzag between 70 and 90 %
    knn = {
        0.02: [90.0, 91.0, 92.0, 92.5, 92.2],
        0.07: [80.0, 81.0, 82.0, 81.5, 81.0],
        0.2: [70.0, 71.0, 71.5, 71.0, 70.0],
    }
    results = [row("nnk", k, v) for k, v in zip(KS, nnk, strict=True)]
    results += [row("knn", k, knn[t][i], t) for i, k in enumerate(KS) for t in TEMPS]  # the order sweep writes
    best_nnk = max(range(len(KS)), key=lambda i: nnk[i])
    doc = {
        "schema_version": 1,
        "store": store,
        "train_split": "train",
        "query_split": "val",
        "n_train": 10000,
        "n_queries": 2000,
        "parameters": {"methods": ["nnk", "knn"], "confidence": confidence, "temperature_grid": TEMPS},
        "results": results,
        "k_values": KS,
        "best": {
            "nnk": {"k": KS[best_nnk], "top1": nnk[best_nnk]},
            "knn": {"k": 20, "top1": 92.5, "temperature": 0.02},
        },
    }
    if select:
        doc["selection"] = {"on": "train", "split": "train"}
        doc["selected"] = {
            "nnk": {"k": 10, "top1": 84.0, "selection_top1": 86.0},
            "knn": {"k": 10, "top1": 82.0, "temperature": 0.07, "selection_top1": 85.0},
        }
    return doc


def svg_texts(path) -> list[str]:
    """Every text element of an SVG (present only when text is kept as text)."""
    root = ElementTree.parse(path).getroot()
    return ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.fixture
def saved_figures(monkeypatch):
    """The annotations' and axes' window extents of each figure as it is saved."""
    from matplotlib.figure import Figure

    real = Figure.savefig
    seen = []

    def savefig(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        seen.append(
            {
                "axes": ax.get_window_extent(renderer),
                "labels": {t.get_text(): t.get_window_extent(renderer) for t in ax.texts},
                "ax": ax,
            }
        )
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_a_temperature_grid_is_one_line_per_temperature():
    lines = sweep_lines(sweep_doc())
    assert [ln.label for ln in lines] == [
        "NNK",
        "weighted k-NN, T = 0.02",
        "weighted k-NN, T = 0.07",
        "weighted k-NN, T = 0.2",
    ]
    for ln in lines:
        assert ln.ks == KS  # no saw-tooth: each k once per line, in order
    assert lines[1].top1 == [90.0, 91.0, 92.0, 92.5, 92.2]
    assert lines[1].best == {"k": 20, "top1": 92.5, "temperature": 0.02}
    assert lines[2].best is None and lines[3].best is None


def test_the_temperature_grid_figure_names_each_t_as_text(tmp_path):
    out = plot_sweep(sweep_doc(), tmp_path / "sweep.svg")
    texts = svg_texts(out)
    for t in ("0.02", "0.07", "0.2"):
        assert f"weighted k-NN, T = {t}" in texts
    assert "NNK" in texts
    assert "95 % Wilson interval" in texts
    assert "best on val: 92.50 % (k=20, T = 0.02)" in texts
    assert "k (neighbors)" in texts and "top-1 accuracy on val" in texts
    assert "90 %" in texts  # tick labels carry the unit


def test_the_k_selected_on_train_is_marked_and_labelled(tmp_path):
    out = plot_sweep(sweep_doc(select=True), tmp_path / "sweep.svg")
    texts = svg_texts(out)
    assert "selected on train: 84.00 % (k=10)" in texts
    assert "selected on train: 82.00 % (k=10, T = 0.07)" in texts
    assert "best on val (optimistic): 92.50 % (k=20, T = 0.02)" in texts
    assert "k selected on train (to report)" in texts
    assert "best k on val (optimistic)" in texts


def test_a_selection_that_is_also_the_best_has_one_label(tmp_path):
    doc = sweep_doc(select=True)
    doc["selected"]["nnk"] = {"k": 20, "top1": 84.5}
    doc["best"]["nnk"] = {"k": 20, "top1": 84.5}
    texts = svg_texts(plot_sweep(doc, tmp_path / "sweep.svg"))
    assert "selected on train (also best on val): 84.50 % (k=20)" in texts
    assert not [t for t in texts if t.startswith("best on val") and "(k=20)" in t]


def test_the_legend_names_the_interval_at_the_runs_level(tmp_path):
    texts = svg_texts(plot_sweep(sweep_doc(confidence=0.9), tmp_path / "sweep.svg"))
    assert "90 % Wilson interval" in texts and "95 % Wilson interval" not in texts


def test_the_title_says_what_is_shown_or_what_the_user_says(tmp_path):
    texts = svg_texts(plot_sweep(sweep_doc(), tmp_path / "a.svg"))
    assert "feats.h5 \N{EM DASH} val: 2,000 queries, train: 10,000 rows" in texts
    texts = svg_texts(plot_sweep(sweep_doc(), tmp_path / "b.svg", title="Fashion-MNIST sample"))
    assert "Fashion-MNIST sample" in texts and not [t for t in texts if "2,000 queries" in t]


@pytest.mark.parametrize("select", [False, True])
def test_labels_stay_inside_the_axes_when_the_best_k_is_the_last(tmp_path, saved_figures, select):
    doc = sweep_doc(best_last=True, select=select)
    plot_sweep(doc, tmp_path / "sweep.png")
    (fig,) = saved_figures
    labels = fig["labels"]
    best = next(box for text, box in labels.items() if "(k=50)" in text)
    assert best is not None
    frame = fig["axes"]
    for text, box in labels.items():
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text
    boxes = list(labels.values())
    for i, a in enumerate(boxes):  # and off each other
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])


def test_svg_keeps_text_as_text_and_leaves_the_users_settings_alone(tmp_path):
    import matplotlib

    before = (matplotlib.rcParams["svg.fonttype"], matplotlib.rcParams["pdf.fonttype"])
    out = plot_sweep(sweep_doc(), tmp_path / "sweep.svg")
    svg = out.read_text()
    assert "<text" in svg
    assert not re.search(r'<path id="DejaVuSans-', svg)  # no glyph outlines
    assert (matplotlib.rcParams["svg.fonttype"], matplotlib.rcParams["pdf.fonttype"]) == before


@pytest.mark.parametrize("draw", ["sweep", "history"])
def test_pdf_embeds_truetype_fonts_not_type3(tmp_path, draw):
    out = tmp_path / "fig.pdf"
    if draw == "sweep":
        plot_sweep(sweep_doc(select=True), out)
    else:
        plot_history(history_rows(), out)
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert not re.search(rb"/Subtype\s*/Type3", data)
    assert re.search(rb"/Subtype\s*/(TrueType|CIDFontType2)", data) and b"/FontFile2" in data


def test_several_sweeps_on_one_axes(tmp_path):
    a, b = sweep_doc(), sweep_doc(select=True, store="other/feats.h5")
    texts = svg_texts(plot_sweeps([a, b], tmp_path / "two.svg", labels=["epoch 10", "epoch 20"]))
    for label in ("epoch 10", "epoch 20"):
        assert f"{label}: NNK" in texts and f"{label}: weighted k-NN, T = 0.07" in texts
    assert "k selected on train (to report)" in texts
    assert "top-1 vs k \N{EM DASH} val: 2,000 queries, train: 10,000 rows" in texts
    with pytest.raises(ValueError, match="1 labels for 2 sweep documents"):
        plot_sweeps([a, b], tmp_path / "x.svg", labels=["one"])


def test_saved_documents_are_named_by_store_or_by_file(tmp_path):
    for name, store in (("a", "x/one.h5"), ("b", "y/two.h5"), ("c", "z/one.h5")):
        (tmp_path / f"{name}.json").write_text(json.dumps(sweep_doc(store=store)))
    texts = svg_texts(plot_sweep_files([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "ab.svg"))
    assert "one.h5: NNK" in texts and "two.h5: NNK" in texts
    texts = svg_texts(plot_sweep_files([tmp_path / "a.json", tmp_path / "c.json"], tmp_path / "ac.svg"))
    assert "a: NNK" in texts and "c: NNK" in texts  # the same store name twice: the files' names


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not a sweep JSON document: not JSON (Expecting value at line 1)"),
        ("[1, 2]", "is not a sweep JSON document: a JSON list, not an object"),
        ('{"schema_version": 1}', "is not a sweep JSON document: no 'store'"),
        (
            json.dumps({**sweep_doc(), "results": [{"method": "nnk", "k": "5", "top1": 1.0}]}),
            "is not a sweep JSON document: result 1 lacks a method, an integer k or a numeric top1",
        ),
        (json.dumps({**sweep_doc(), "results": []}), "is not a sweep JSON document: no results"),
    ],
)
def test_a_file_that_is_not_a_sweep_document_is_refused(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(InputError) as err:
        plot_sweep_files([bad], tmp_path / "out.png")
    assert err.value.message == f"{bad} {message}"
    assert not (tmp_path / "out.png").exists()


def history_rows():
    rows = []
    for i, (nnk, knn) in enumerate([(70.0, 69.0), (72.0, 71.0), (74.0, 72.5)]):
        rows.append(
            {
                "step": 10 * (i + 1),
                "source": f"ckpt{i}.pth",
                "nnk_top1": nnk,
                "nnk_top1_ci": [nnk - 2, nnk + 2],
                "nnk_k": 50,
                "knn_top1": knn,
                "knn_top1_ci": [knn - 2, knn + 2],
                "knn_k": 10,
                "best": "nnk knn" if i == 2 else "",
            }
        )
    return rows


def test_history_labels_carry_percent_and_sit_beside_their_error_bars(tmp_path, saved_figures):
    out = plot_history(history_rows(), tmp_path / "h.svg", title="my run")
    texts = svg_texts(out)
    assert "best 74.00 % (k=50)" in texts and "best 72.50 % (k=10)" in texts
    assert "error bars: 95 % Wilson interval" in texts
    assert "my run" in texts and "74 %" in texts
    (fig,) = saved_figures
    ax, frame = fig["ax"], fig["axes"]
    x_bar = ax.transData.transform((30, 74.0))[0]  # the error bars of the best row are drawn at x = step 30
    for text in ("best 74.00 % (k=50)", "best 72.50 % (k=10)"):
        box = fig["labels"][text]
        assert box.x1 < x_bar or box.x0 > x_bar, text  # the bar does not run through the label
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
