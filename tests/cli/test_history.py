"""``nnk history``: rows, deltas, malformed lines, formats, plot."""

from __future__ import annotations

import hashlib
import json

import pytest

from nnkcli.cli import cli
from nnkcli.tracking.history import append_entry


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def add(path, n, step, nnk, knn):
    append_entry(
        path,
        {
            "source": f"/runs/checkpoint{step:04d}.pth",
            "sha256": sha(n),
            "step": step,
            "best": {"nnk": {"k": 50 + n, "top1": nnk, "top5": 90.0}, "knn": {"k": 10 + n, "top1": knn, "top5": 88.0}},
            "results": [],
            "finished_at": f"2024-01-0{n}T00:00:00.000+00:00",
        },
    )


@pytest.fixture
def history_file(tmp_path):
    p = tmp_path / "history.jsonl"
    add(p, 1, 20, 71.5, 70.0)  # evaluated first but a later step
    add(p, 2, 10, 70.25, 70.5)
    with open(p, "a") as fh:
        fh.write('{"schema_version": 1, "sha256": "oops"}\n')
    add(p, 3, 30, 71.0, 69.0)
    with open(p, "a") as fh:
        fh.write('{"schema_version": 1, "sha2')  # torn last line of a crashed writer
    return p


def test_history_csv_rows_ordered_by_step_with_deltas(runner, history_file):
    res = runner.invoke(cli, ["history", str(history_file), "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == [
        "step,source,sha256,nnk_top1,nnk_top1_ci_low,nnk_top1_ci_high,nnk_k,nnk_delta_prev,nnk_delta_best,"
        "knn_top1,knn_top1_ci_low,knn_top1_ci_high,knn_k,knn_delta_prev,knn_delta_best,best",
        f"10,checkpoint0010.pth,{sha(2)[:12]},70.25,,,52,,-1.25,70.5,,,12,,0.0,knn",
        f"20,checkpoint0020.pth,{sha(1)[:12]},71.5,,,51,1.25,0.0,70.0,,,11,-0.5,-0.5,nnk",
        f"30,checkpoint0030.pth,{sha(3)[:12]},71.0,,,53,-0.5,-0.5,69.0,,,13,-1.0,-1.5,",
    ]
    assert res.stderr.splitlines() == [
        f"warning: history.jsonl: 2 malformed lines skipped (first: line 3: missing or bad sha256); "
        f"'nnk history {history_file} --format json' lists them",
    ]


def test_history_table_marks_best_and_reports_malformed(runner, history_file):
    res = runner.invoke(cli, ["history", str(history_file)])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    row20 = next(line for line in lines if "checkpoint0020.pth" in line)
    assert row20.split() == [
        "20",
        "checkpoint0020.pth",
        sha(1)[:12],
        "71.50",
        "51",
        "+1.25",
        "+0.00",
        "70.00",
        "11",
        "-0.50",
        "-0.50",
        "nnk",
    ]
    caption = next(line for line in lines if line.startswith("3 sources with parameter set 1 ("))
    assert caption.endswith(", 2 malformed lines skipped")
    assert "line 3: missing or bad sha256" in res.stderr


def test_history_json(runner, history_file):
    res = runner.invoke(cli, ["history", str(history_file), "--format", "json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 1 and doc["n_entries"] == 3 and doc["methods"] == ["nnk", "knn"]
    assert doc["best"]["nnk"] == {
        "source": "/runs/checkpoint0020.pth",
        "sha256": sha(1),
        "step": 20,
        "top1": 71.5,
        "k": 51,
    }
    assert [r["step"] for r in doc["rows"]] == [10, 20, 30]
    assert doc["malformed"][0] == {"line": 3, "reason": "missing or bad sha256"}
    # malformed lines are still reported with --format json (stdout stays pure JSON)
    assert "2 malformed lines skipped" in res.stderr


def test_history_json_best_comes_from_the_entries_not_the_best_column(runner, history_file, monkeypatch):
    # the 'best' column is a display string; the JSON's best entries must not be read back from it
    from nnkcli.tracking import views

    real = views.history_rows

    def rows_with_another_display(entries, methods=None):
        rows = real(entries, methods)
        for row in rows:
            row["best"] = ",".join(row["best"].split()).upper()  # "nnk knn" -> "NNK,KNN"
        return rows

    monkeypatch.setattr(views, "history_rows", rows_with_another_display)
    res = runner.invoke(cli, ["history", str(history_file), "--format", "json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["best"] == {
        "nnk": {"source": "/runs/checkpoint0020.pth", "sha256": sha(1), "step": 20, "top1": 71.5, "k": 51},
        "knn": {"source": "/runs/checkpoint0010.pth", "sha256": sha(2), "step": 10, "top1": 70.5, "k": 12},
    }


def test_history_quiet_silences_warnings(runner, history_file):
    res = runner.invoke(cli, ["history", str(history_file), "-qq", "--format", "csv"])
    assert res.exit_code == 0 and res.stderr == ""


def test_history_missing_file(runner, tmp_path):
    res = runner.invoke(cli, ["history", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: history file not found: {tmp_path / 'none.jsonl'}",
        "Hint: nnk evaluate ... --history FILE creates it",
    ]


def test_history_empty_file(runner, tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text("")
    res = runner.invoke(cli, ["history", str(p), "--format", "csv"])
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["step,source,sha256,best"]


def test_history_plot(runner, history_file, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "history.png"
    res = runner.invoke(cli, ["history", str(history_file), "--plot", str(out), "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_history_plot_bad_suffix(runner, history_file, tmp_path):
    res = runner.invoke(cli, ["history", str(history_file), "--plot", str(tmp_path / "h.jpg")])
    assert res.exit_code == 2  # a bad option value
    assert res.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--plot': unknown file type '.jpg' (got "
        f"{str(tmp_path / 'h.jpg')!r}); use a .png, .svg or .pdf file name"
    )


def test_history_plot_without_matplotlib(runner, history_file, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    res = runner.invoke(cli, ["history", str(history_file), "--plot", str(tmp_path / "h.png")])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: --plot needs the optional 'plot' extra, which is not installed",
        'Hint: pip install "nnkcli[plot]"',
    ]
    assert not (tmp_path / "h.png").exists()


# -- only a history is read or appended to; reading creates nothing ------------------------------------
NOT_A_HISTORY = "its first line is not a history record; it was left as it is"
HINT = "Hint: --history takes the .jsonl file that nnk evaluate writes, or a new file name"


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("plot", [False, True])
def test_a_feature_store_is_refused_as_a_history_and_left_as_it_was(runner, store, plot):
    before, listing = hashlib.sha256(store.read_bytes()).hexdigest(), _listing(store.parent)
    args = ["history", str(store)] + (["--plot", str(store.parent / "h.png")] if plot else [])
    res = runner.invoke(cli, args)
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: {store} is not an nnkcli history (it is an HDF5 file: a feature store?): {NOT_A_HISTORY}",
        HINT,
    ]
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert _listing(store.parent) == listing  # no lock file, no plot


def test_a_text_file_is_refused_as_a_history(runner, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("epoch 1: 71.2\n")
    res = runner.invoke(cli, ["history", str(notes)])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == f"Error: {notes} is not an nnkcli history: {NOT_A_HISTORY}"
    assert _listing(tmp_path) == ["notes.txt"]


def test_reading_a_history_creates_no_file(runner, history_file, tmp_path):
    listing = _listing(tmp_path)
    assert runner.invoke(cli, ["history", str(history_file), "--format", "json"]).exit_code == 0
    lock = tmp_path / "history.jsonl.lock"
    lock.touch()  # an (empty) lock file read as a history: an empty history, and no lock of the lock
    res = runner.invoke(cli, ["history", str(lock), "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["n_entries"] == 0
    assert _listing(tmp_path) == sorted([*listing, "history.jsonl.lock"])


def test_plotting_a_history_without_entries_is_refused(runner, tmp_path):
    empty = tmp_path / "h.jsonl"
    empty.touch()
    res = runner.invoke(cli, ["history", str(empty), "--plot", str(tmp_path / "h.png")])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: {empty} has no entries to plot; no figure was written",
        "Hint: nnk evaluate ... --history FILE records them",
    ]
    assert _listing(tmp_path) == ["h.jsonl"]
