"""What a log gets while a long command runs, and tables that fit an 80-column terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from nnk_pty import run_in_terminal

REPO = Path(__file__).resolve().parents[2]

# a sweep whose scoring is slowed down (every chunk waits 0.15 s): 20 chunks last about 3 s whatever the machine
SLOW_SWEEP = """
import sys, time
import nnkcli.evaluation.streaming as streaming
score_chunk = streaming.score_chunk
def slow(*args, **kwargs):
    time.sleep(0.15)
    return score_chunk(*args, **kwargs)
streaming.score_chunk = slow
from nnkcli.cli import main
main(sys.argv[1:])
"""

PERIODIC = re.compile(r"^sweeping: ([\d,]+)/2,000 queries \(\d+ %\), [\d,.]+ queries/s, ETA [\d:.]+s?$")
END = re.compile(r"^sweeping: 2,000/2,000 queries, [\d,.]+ queries/s, done in [\d:.]+s?$")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_a_sweep_logs_progress_lines_when_stderr_is_a_file(sample_store, tmp_path):
    store = tmp_path / "fm.h5"
    shutil.copy(sample_store, store)
    log = tmp_path / "nnk.log"
    argv = ["sweep", str(store), "--k", "10..30", "--chunk-size", "100", "--threads", "1", "--progress-every", "1"]
    with open(log, "w") as err:
        done = subprocess.run(
            [sys.executable, "-c", SLOW_SWEEP, *argv, "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
            timeout=300,
        )
    lines = log.read_text().splitlines()
    assert done.returncode == 0, lines
    assert json.loads(done.stdout)["k_values"] == [10, 20, 30]  # --format json: the progress stays on stderr
    periodic = [m for m in map(PERIODIC.match, lines) if m]
    assert len(periodic) >= 2, lines
    counts = [int(m.group(1).replace(",", "")) for m in periodic]
    assert counts == sorted(counts) and counts[-1] <= 2000
    assert END.match(lines[-1]), lines  # the stage's end, after the lines every second
    assert all(PERIODIC.match(line) or END.match(line) or "flat index in memory" in line for line in lines), lines


def test_quiet_and_short_stages_write_no_progress(sample_store, tmp_path):
    store = tmp_path / "fm.h5"
    shutil.copy(sample_store, store)
    argv = ["sweep", str(store), "--k", "10..30", "--chunk-size", "100", "--progress-every", "1", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", SLOW_SWEEP, *argv], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0 and done.stderr == ""
    # the default interval (30 s): a 3 s run's log stays empty but for the info line
    done = subprocess.run(
        [sys.executable, "-c", SLOW_SWEEP, *argv[:-3]], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0 and "sweeping" not in done.stderr


def test_progress_every_must_be_positive(runner):
    from nnk_cli import invoke

    for value in ("0", "-1", "nan"):
        res = invoke(runner, "--progress-every", value, "info", "x.h5")
        assert res.exit_code == 2
        assert "Invalid value for '--progress-every': must be a positive number of seconds" in res.stderr


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "━" not in line]  # the (transient) bars aside


def test_sweep_temperature_grid_and_evaluate_fit_80_columns(sample_store, tmp_path):
    store = tmp_path / "epoch_3.h5"
    shutil.copy(sample_store, store)
    code, text = run_in_terminal("sweep", store, "--temperature", "0.02,0.07,0.2", cwd=tmp_path)
    assert code == 0, text
    assert "…" not in text
    lines = _table_lines(text)
    table = [line for line in lines if not line.startswith(("± half-width", "2000 queries"))]
    assert max(len(line) for line in table) <= 80, "\n".join(table)
    for header in ("T=0.02", "T=0.07", "T=0.2", "nnk support"):
        assert header in text
    assert re.search(r"±\d\.\d\d\*", text) and re.search(r"±\d\.\d\d~", text)  # the markers kept

    history = tmp_path / "history.jsonl"
    for status in ("evaluated", "skipped: already in history"):
        code, text = run_in_terminal("evaluate", store, "--history", history, "--k", "10..50", cwd=tmp_path)
        assert code == 0, text
        assert "…" not in text
        assert "epoch_3.h5" in text and "seconds" in text
        words = status.split()
        assert any(all(w in line for w in words[:2]) for line in text.splitlines()), text
    code, text = run_in_terminal("history", history, cwd=tmp_path)
    assert code == 0 and "…" not in text and "vs best" in text
    code, text = run_in_terminal("info", store, cwd=tmp_path)
    assert code == 0 and "…" not in text and "content_sha256" in text and "nnkcli_version" in text
