"""``nnk plot`` (saved sweeps on one axes) and ``--title`` of ``sweep --plot`` / ``history --plot``."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from nnk_cli import invoke

pytest.importorskip("matplotlib")


def svg_texts(path) -> list[str]:
    root = ElementTree.parse(path).getroot()
    return ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.fixture
def saved(runner, store, tmp_path):
    """Two sweep documents saved as users save them (the same store: named by their files)."""
    paths = []
    for name, spec in (("ep10", "2..10:2"), ("ep20", "3..12:3")):
        res = invoke(runner, "sweep", store, "--k", spec, "--temperature", "0.05,0.1", "--format", "json")
        assert res.exit_code == 0, res.stderr
        path = tmp_path / f"{name}.json"
        path.write_text(res.stdout)
        paths.append(path)
    return paths


def test_plot_draws_saved_sweeps_on_one_axes(runner, saved, tmp_path):
    out = tmp_path / "sweeps.svg"
    res = invoke(runner, "plot", *saved, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert res.stderr == f"plot of 2 sweeps written to {out}\n"
    texts = svg_texts(out)
    for name in ("ep10", "ep20"):
        assert f"{name}: NNK" in texts
        assert f"{name}: weighted k-NN, T = 0.05" in texts and f"{name}: weighted k-NN, T = 0.1" in texts
    assert "95 % Wilson interval" in texts
    doc = json.loads(saved[0].read_text())
    assert f"top-1 vs k \N{EM DASH} val: {doc['n_queries']:,} queries, train: {doc['n_train']:,} rows" in texts


def test_plot_labels_and_title(runner, saved, tmp_path):
    out = tmp_path / "sweeps.pdf"
    res = invoke(runner, "plot", *saved, "--out", out, "--label", "epoch 10", "--label", "epoch 20", "--title", "T")
    assert res.exit_code == 0, res.stderr
    assert out.read_bytes().startswith(b"%PDF") and b"/Type3" not in out.read_bytes()
    svg = tmp_path / "sweeps.svg"
    res = invoke(
        runner, "plot", *saved, "--out", svg, "--label", "epoch 10", "--label", "epoch 20", "--title", "My run"
    )
    texts = svg_texts(svg)
    assert "My run" in texts and "epoch 10: NNK" in texts and "epoch 20: NNK" in texts


HINT = "Hint: write one with: nnk sweep STORE --format json > FILE.json"


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: p.write_text("not json\n"),
            "{p} is not a sweep JSON document: not JSON (Expecting value at line 1)",
        ),
        (lambda p: p.write_text('{"nnk": 1}'), "{p} is not a sweep JSON document: no 'store'"),
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe"), "{p} is not a sweep JSON document: not UTF-8 text"),
        (lambda p: None, "no such file: {p}"),
        (lambda p: p.mkdir(), "{p} is a directory, not a sweep JSON document"),
    ],
    ids=["not-json", "not-a-sweep", "binary", "missing", "directory"],
)
def test_a_bad_document_is_exit_1_and_nothing_is_written(runner, saved, tmp_path, make, message):
    bad = tmp_path / "bad.json"
    make(bad)
    out = tmp_path / "sweeps.png"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = invoke(runner, "plot", saved[0], bad, "--out", out)
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"Error: {message.format(p=bad)}", HINT]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_options_are_exit_2(runner, saved, tmp_path):
    res = invoke(runner, "plot", *saved, "--out", tmp_path / "fig.jpg")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--out': unknown file type '.jpg' (got {str(tmp_path / 'fig.jpg')!r}); "
        "use a .png, .svg or .pdf file name"
    )
    res = invoke(runner, "plot", *saved, "--out", tmp_path / "fig.png", "--label", "only one")
    assert res.exit_code == 2
    assert (
        res.stderr.splitlines()[-1]
        == "Error: Invalid value for '--label': give one --label per document: 1 for 2 documents"
    )
    res = invoke(runner, "plot", "--out", tmp_path / "fig.png")
    assert res.exit_code == 2 and "Missing argument 'SWEEP.json...'" in res.stderr
    res = invoke(runner, "plot", *saved)
    assert res.exit_code == 2 and "Missing option '--out'" in res.stderr
    assert not (tmp_path / "fig.png").exists()


def test_sweep_plot_of_a_temperature_grid_with_selection_and_title(runner, store, tmp_path):
    out = tmp_path / "sweep.svg"
    res = invoke(
        runner,
        "sweep",
        store,
        "--k",
        "2..10:2",
        "--temperature",
        "0.05,0.1",
        "--select-on",
        "train",
        "--plot",
        out,
        "--title",
        "Toy store",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    texts = svg_texts(out)
    assert "Toy store" in texts
    assert "weighted k-NN, T = 0.05" in texts and "weighted k-NN, T = 0.1" in texts
    sel = doc["selected"]["nnk"]
    assert [t for t in texts if t.startswith("selected on train") and f"% (k={sel['k']})" in t]
    assert "k selected on train (to report)" in texts


def test_sweep_default_title_names_store_split_and_sizes(runner, store, tmp_path):
    out = tmp_path / "sweep.svg"
    res = invoke(runner, "sweep", store, "--k", "2..6:2", "--plot", out, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    title = f"feats.h5 \N{EM DASH} val: {doc['n_queries']:,} queries, train: {doc['n_train']:,} rows"
    assert title in svg_texts(out)


@pytest.mark.parametrize("command", ["sweep", "history"])
def test_title_without_plot_is_a_usage_error(runner, store, tmp_path, command):
    target = store if command == "sweep" else tmp_path / "h.jsonl"
    res = invoke(runner, command, target, "--title", "x")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == "Error: --title is the title of the --plot figure: give --plot too"


def test_history_plot_title(runner, tmp_path):
    from nnkcli.tracking.history import append_entry

    hist = tmp_path / "h.jsonl"
    for n, (step, nnk, knn) in enumerate([(10, 70.0, 69.0), (20, 71.0, 69.5)], start=1):
        best = {"nnk": {"k": 50 + n, "top1": nnk, "top5": 90.0}, "knn": {"k": 10 + n, "top1": knn, "top5": 88.0}}
        append_entry(hist, {"source": f"/runs/ckpt{step}.pth", "sha256": f"{n:064x}", "step": step, "best": best})
    out = tmp_path / "h.svg"
    res = invoke(runner, "history", hist, "--plot", out, "--title", "ViT-S/16", "-q")
    assert res.exit_code == 0, res.stderr
    texts = svg_texts(out)
    assert "ViT-S/16" in texts and "best 71.00 % (k=52)" in texts
    res = invoke(runner, "history", hist, "--plot", out, "-q")
    assert "h.jsonl: best top-1 of each method per checkpoint" in svg_texts(out)
