"""nnkcli.output: the three formats, JSON versioning and NaN handling, verbosity levels."""

from __future__ import annotations

import io
import json
import logging
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
