"""nnkcli.output: the three formats, JSON versioning and NaN handling, verbosity levels."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import numpy as np

from nnkcli.output import Column, Ui, configure_logging, jsonable, render, to_json

COLUMNS = [Column("method", justify="left"), Column("top1", "top-1 %", ".2f")]
ROWS = [{"method": "nnk", "top1": 85.456}, {"method": "knn", "top1": float("nan")}]


def test_json_is_versioned_and_has_no_nan():
    out = io.StringIO()
    render({"results": ROWS, "n": np.int64(3)}, fmt="json", columns=COLUMNS, rows=ROWS, file=out)
    doc = json.loads(out.getvalue())
    assert list(doc)[0] == "schema_version" and doc["schema_version"] == 1
    assert doc["results"][1]["top1"] is None and doc["n"] == 3


def test_csv_raw_values_and_empty_for_missing():
    out = io.StringIO()
    render({}, fmt="csv", columns=COLUMNS, rows=ROWS, file=out)
    assert out.getvalue() == "method,top1\nnnk,85.456\nknn,\n"


def test_table_formats_and_caption():
    out = io.StringIO()
    render({}, fmt="table", columns=COLUMNS, rows=ROWS, caption="two rows", file=out)
    text = out.getvalue()
    assert "85.46" in text and "top-1 %" in text and "\x1b[" not in text  # no colour off a terminal
    assert text.splitlines()[-1] == "two rows"
    assert " - " in text.splitlines()[-3] + " "  # NaN shown as '-'


def test_jsonable_handles_numpy_and_paths(tmp_path):
    assert jsonable({"a": np.arange(3), "p": tmp_path, "f": np.float32(0.5), "x": float("inf")}) == {
        "a": [0, 1, 2],
        "p": str(tmp_path),
        "f": 0.5,
        "x": None,
    }
    assert json.loads(to_json({"schema_version": 7, "b": 1})) == {"schema_version": 1, "b": 1}


def test_logging_levels(capsys):
    log = logging.getLogger("nnkcli")
    for verbosity, fmt, shown in [
        (0, "table", {"info", "warning"}),
        (-1, "table", {"warning"}),
        (0, "json", {"warning"}),
        (-2, "table", set()),
        (1, "table", {"debug", "info", "warning"}),
    ]:
        configure_logging(Ui(verbosity=verbosity, fmt=fmt))
        log.debug("debug")
        log.info("info")
        log.warning("warning")
        err = capsys.readouterr().err
        seen = {w for w in ("debug", "info", "warning") if any(line.endswith(w) for line in err.splitlines())}
        assert seen == shown, (verbosity, fmt, err)
    assert err.splitlines()[-1] == "warning: warning"  # plain prefix off a terminal


def _progress_output(monkeypatch, ui, tty):
    """What ``ui.progress`` writes to stdout and stderr while advancing 3 + 4 of 10 rows."""
    from rich.console import Console

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(Ui, "stderr_is_tty", property(lambda self: tty))
    ui._stderr_console = Console(file=err, force_terminal=tty, width=120)
    with ui.progress(10, "scanning", unit="rows") as advance:
        advance(3)
        advance(4)
    return out.getvalue(), err.getvalue()


def test_progress_bar_is_drawn_on_stderr_on_a_terminal_unless_quiet(monkeypatch):
    out, err = _progress_output(monkeypatch, Ui(), tty=True)
    assert out == ""
    assert "scanning" in err and "7/10" in err and "rows/s" in err
    # a short stage off a terminal: no line (the interval had not passed, nor did the stage last it)
    assert _progress_output(monkeypatch, Ui(), tty=False) == ("", "")
    assert _progress_output(monkeypatch, Ui(verbosity=-1), tty=True) == ("", "")  # -q
    assert _progress_output(monkeypatch, Ui(verbosity=-1, progress_every=1e-9), tty=False) == ("", "")
    # --format json is about stdout: the progress on stderr stays (a cron job's log still shows it)
    out, err = _progress_output(monkeypatch, Ui(fmt="json"), tty=True)
    assert out == "" and "7/10" in err


def _table_at(monkeypatch, width, columns, rows, title=None):
    """A table as a ``width``-column terminal shows it (escape codes removed)."""
    import nnkcli.output as output

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(output, "_isatty", lambda stream: True)
    out = io.StringIO()
    render({}, fmt="table", columns=columns, rows=rows, title=title, file=out)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())


def test_a_wide_table_is_split_between_groups_and_nothing_is_cut(monkeypatch):
    columns = [Column("k")] + [
        Column(f"{m}{t}_{s}", f"{m} T={t} top-{s} %", ".2f", ci=f"{m}{t}_{s}_ci", group=f"{m}{t}")
        for m in ("knn",)
        for t in ("0.02", "0.07", "0.2", "0.5")
        for s in (1, 5)
    ]
    rows = [
        {"k": k, **{c.key: 80.123 + k for c in columns[1:]}, **{c.ci: [79.0, 82.5] for c in columns[1:]}}
        for k in (10, 200)
    ]
    text = _table_at(monkeypatch, 72, columns, rows, title="a sweep")
    lines = text.splitlines()
    assert "…" not in text and max(map(len, lines)) <= 72
    assert text.count("a sweep") == 1 and text.count("  200 ") == 2  # two tables, the key in each
    for t in ("0.02", "0.07", "0.2", "0.5"):
        assert f"T={t}" in text  # one group's columns side by side: never a header split from its group
    assert text.count("90.12") == 8 and text.count("280.12") == 8 and text.count("±1.75") == 16
    wide = _table_at(monkeypatch, 200, columns, rows)
    assert (
        re.search(r"^ +10 +90\.12 ±1\.75 +90\.12 ±1\.75", wide, re.M) and wide.count("  200 ") == 1
    )  # wide enough: one table, one line a row


def test_a_long_word_folds_in_a_text_column_when_nothing_else_fits(monkeypatch):
    sha = "3ea319a80bbf7bd0de62e58a8715e74b07958f20b148396752ad43b88f2f1db3"
    columns = [Column("split", justify="left"), Column("key", justify="left"), Column("value", justify="left")]
    rows = [{"split": "train", "key": "content_sha256", "value": sha}, {"split": "val", "key": "n", "value": 7}]
    text = _table_at(monkeypatch, 60, columns, rows)
    assert "…" not in text and max(map(len, text.splitlines())) <= 60
    assert "content_sha256" in text  # the short words stay whole; the sha256 folds onto a second line
    pieces = [w for line in text.splitlines() for w in line.split() if re.fullmatch("[0-9a-f]{2,}", w)]
    assert len(pieces) > 1 and "".join(pieces) == sha


def test_a_failed_stage_writes_no_end_line(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(Ui, "stderr_is_tty", property(lambda self: False))
    ui = Ui(progress_every=1e-9)
    with ui.progress(10, "sweeping") as advance:
        advance(4)
    assert err.getvalue().splitlines()[-1].startswith("sweeping: 4/10 queries, ")
    err.truncate(0)
    err.seek(0)
    try:
        with ui.progress(10, "classifying") as advance:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert err.getvalue() == ""
