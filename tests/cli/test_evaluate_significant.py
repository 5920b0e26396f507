"""`nnk evaluate --significant`: per-query results in HISTORY.d/, McNemar against the best other entry."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

import nnk_data
from nnkcli.cli import cli
from nnkcli.errors import InputError
from nnkcli.tracking import sidecar
from nnkcli.tracking.history import read_history

# 400 train rows drawn with ``noise``, 300 queries (ids q0, q1, ...) with noise 1
make_store = partial(nnk_data.make_store, n_train=400, n_query=300, query_noise=1.0, ids="q{}")


def evaluate(runner, *args):
    return runner.invoke(cli, ["evaluate", *map(str, args)], catch_exceptions=False)


def test_sidecar_written_before_the_line_and_matches_classify(runner, tmp_path):
    s = make_store(tmp_path / "ckpt_1.h5", noise=1.0)
    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, s, "--history", hist, "--k", "5,10", "--method", "nnk").exit_code == 0
    [entry] = read_history(hist).entries
    ref = entry["hits"]
    assert ref["file"].startswith(entry["sha256"][:16] + "-" + entry["params_key"] + "-")
    assert (tmp_path / "h.jsonl.d" / ref["file"]).is_file()
    hits = sidecar.read(hist, ref)
    k, bits = hits.by_method["nnk"]
    assert k == entry["best"]["nnk"]["k"] and bits.dtype == bool and bits.size == 300
    out = tmp_path / "pred.h5"
    assert (
        runner.invoke(cli, ["classify", str(s), "--k", str(k), "--method", "nnk", "--out", str(out), "-q"]).exit_code
        == 0
    )
    import h5py

    with h5py.File(out, "r") as f:
        expected = f["nnk/top5"][:, 0] == f["labels"][:]
    assert np.array_equal(bits, expected)
    assert 100 * bits.mean() == pytest.approx(entry["best"]["nnk"]["top1"], abs=1e-4)


def test_significant_gate_fails_only_on_a_significant_drop(runner, tmp_path):
    hist = tmp_path / "h.jsonl"
    good = make_store(tmp_path / "ckpt_2.h5", noise=1.0)
    close = make_store(tmp_path / "ckpt_3.h5", noise=1.08)  # a little worse, within the noise
    bad = make_store(tmp_path / "ckpt_4.h5", noise=1.0, shuffle_train=True)
    args = ("--history", hist, "--k", "5,10", "--method", "nnk")
    for s in (good, close, bad):
        assert evaluate(runner, s, *args).exit_code == 0
    entries = {e["source"].rsplit("/", 1)[-1]: e for e in read_history(hist).entries}
    top = {name: e["best"]["nnk"]["top1"] for name, e in entries.items()}
    assert top["ckpt_2.h5"] > top["ckpt_3.h5"] > top["ckpt_4.h5"] + 20

    def p_against_good(name):  # oracle: scipy on the recorded bits
        a = sidecar.read(hist, entries["ckpt_2.h5"]["hits"]).by_method["nnk"][1]
        b = sidecar.read(hist, entries[name]["hits"]).by_method["nnk"][1]
        return binomtest(int((b & ~a).sum()), int((a & ~b).sum() + (b & ~a).sum()), 0.5).pvalue

    drop = round(top["ckpt_2.h5"] - top["ckpt_3.h5"], 2)
    assert p_against_good("ckpt_3.h5") >= 0.05
    plain = evaluate(runner, close, *args, "--fail-on-regression", "0", "-q")
    assert plain.exit_code == 3  # without --significant any drop beyond 0 points fails
    res = evaluate(runner, close, *args, "--fail-on-regression", "0", "--significant", "--format", "json")
    assert res.exit_code == 0, res.stderr
    [gate] = json.loads(res.stdout)["gate"]["sources"]
    assert gate["paired"] == "paired" and gate["p_value"] == pytest.approx(p_against_good("ckpt_3.h5"))
    assert f"ckpt_3.h5 (step 3): the drop of {drop:.2f} points is not significant (McNemar p = " in res.stderr
    res = evaluate(runner, bad, *args, "--fail-on-regression", "0", "--significant", "-q")
    assert res.exit_code == 3
    p = p_against_good("ckpt_4.h5")
    assert res.stderr.splitlines()[0].endswith(f"(allowed: 0, McNemar p = {p:.4g} < 0.05)")


def test_entries_on_other_queries_are_not_paired_and_the_plain_gate_applies(runner, tmp_path):
    hist = tmp_path / "h.jsonl"
    args = ("--history", hist, "--k", "5", "--method", "nnk")
    a = make_store(tmp_path / "ckpt_1.h5", noise=1.0)
    b = make_store(tmp_path / "ckpt_2.h5", noise=1.0, shuffle_train=True, query_seed=7)
    assert evaluate(runner, a, *args).exit_code == 0
    res = evaluate(runner, b, *args, "--fail-on-regression", "0", "--significant", "-q")
    assert res.exit_code == 3
    assert (
        "warning: ckpt_2.h5 (step 2) and ckpt_1.h5 (step 1) are not paired (different query labels): the plain "
        "regression gate applies"
    ) in res.stderr


def test_significant_needs_fail_on_regression(runner, tmp_path):
    res = evaluate(runner, make_store(tmp_path / "s.h5", noise=1.0), "--history", tmp_path / "h.jsonl", "--significant")
    assert res.exit_code == 2 and "--significant qualifies --fail-on-regression PTS; give both" in res.stderr


def test_a_run_killed_between_sidecar_and_line_leaves_no_reference_to_a_missing_file(runner, tmp_path, monkeypatch):
    hist = tmp_path / "h.jsonl"
    s = make_store(tmp_path / "ckpt_1.h5", noise=1.0)

    def killed(path, entry):
        raise KeyboardInterrupt  # after the sidecar file was written, before the line

    monkeypatch.setattr("nnkcli.tracking.runner.append_entry", killed)
    res = evaluate(runner, s, "--history", hist, "--k", "5", "--method", "nnk")
    assert res.exit_code == 130
    monkeypatch.undo()
    folder = tmp_path / "h.jsonl.d"
    leftovers = sorted(p.name for p in folder.iterdir())
    assert len(leftovers) == 1 and leftovers[0].endswith(".hits")  # complete, unreferenced, no temp file
    assert not hist.exists() or read_history(hist).entries == []
    assert evaluate(runner, s, "--history", hist, "--k", "5", "--method", "nnk").exit_code == 0
    [entry] = read_history(hist).entries
    assert sidecar.read(hist, entry["hits"]).by_method["nnk"][1].size == 300


def test_a_damaged_or_missing_sidecar_is_an_error_naming_it(tmp_path):
    hist = tmp_path / "h.jsonl"
    hits = sidecar.Hits(sidecar.query_identity(np.arange(5)), {"nnk": (5, np.array([1, 0, 1, 1, 0], bool))})
    ref = sidecar.write(hist, "x", hits)
    path = tmp_path / "h.jsonl.d" / "x.hits"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(InputError, match="do not match the history's sha256"):
        sidecar.read(hist, ref)
    path.unlink()
    with pytest.raises(InputError, match="named by the history are missing"):
        sidecar.read(hist, ref)
    assert sidecar.read(hist, None) is None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1))
def test_sidecar_round_trip(n, seed):
    rng = np.random.default_rng(seed)
    bits = {"nnk": (7, rng.random(n) < 0.8), "knn": (20, rng.random(n) < 0.5)}
    labels = rng.integers(0, 4, n)
    hits = sidecar.Hits(sidecar.query_identity(labels, [f"i{i}" for i in range(n)]), bits)
    back = sidecar.decode(sidecar.encode(hits))
    assert back.identity == hits.identity
    for m, (k, b) in bits.items():
        assert back.by_method[m][0] == k and np.array_equal(back.by_method[m][1], b)
    assert back.paired_with(hits) is None


def test_one_million_queries_take_about_125_kb():
    bits = np.random.default_rng(0).random(1_280_000) < 0.8
    data = sidecar.encode(sidecar.Hits(sidecar.query_identity(np.zeros(3)), {"nnk": (50, bits)}))
    assert len(data) < 165_000  # 1.28 M bits = 160 KB, compressed a little


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_lines_and_sidecar_files_consistent(tmp_path):
    """Real kills at spread-out moments: every line's sidecar file exists and matches, none is torn."""
    import os
    import signal
    import subprocess
    import sys
    import time

    s = make_store(tmp_path / "ckpt_1.h5", noise=1.0)
    hist = tmp_path / "h.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "nnkcli",
        "evaluate",
        str(s),
        "--history",
        str(hist),
        "--k",
        "5,10",
        "--method",
        "nnk",
        "--force",
        "-qq",
    ]
    for delay in (0.4, 0.9, 1.3, 1.7, 2.2, 3.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        hist_now = read_history(hist) if hist.exists() else None
        if hist_now is not None:
            assert not hist_now.malformed
            for entry in hist_now.entries:  # no reference to a missing, torn or other file
                assert sidecar.read(hist, entry["hits"]).by_method["nnk"][1].size == 300
        folder = tmp_path / "h.jsonl.d"
        for f in folder.glob("*.hits") if folder.exists() else ():
            sidecar.decode(f.read_bytes(), str(f))  # every complete-named file is whole
    assert subprocess.run(cmd, env=os.environ.copy()).returncode == 0
    entries = read_history(hist).entries
    assert entries and all(sidecar.read(hist, e["hits"]) is not None for e in entries)
