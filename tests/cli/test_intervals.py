"""Intervals on every accuracy, the sweep's significance marks, --gate-method and gate values (CLI)."""

from __future__ import annotations

import csv
import io
import json

import h5py
import pytest
from scipy.stats import binomtest

from nnk_cli import invoke


def wilson_pct(hits, n, confidence=0.95):
    ci = binomtest(hits, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [100 * ci.low, 100 * ci.high]


def test_classify_json_has_wilson_intervals_next_to_each_accuracy(runner, store):
    res = invoke(runner, "classify", store, "--k", "5", "--format", "json", "--per-class")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["parameters"]["confidence"] == 0.95
    for r in doc["results"]:
        n = r["n_queries"]
        for key in ("top1", "top5"):
            hits = round(r[key] * n / 100)
            assert r[f"{key}_ci"] == pytest.approx(wilson_pct(hits, n), abs=1e-4)
        lo, hi = r["balanced_accuracy_ci"]
        assert lo < r["balanced_accuracy"] < hi
        for pc in r["per_class"].values():
            hits = round(pc["top1"] * pc["n"] / 100)
            assert pc["top1_ci"] == pytest.approx(wilson_pct(hits, pc["n"]), abs=1e-4)


def test_confidence_changes_the_width(runner, store):
    wide = json.loads(invoke(runner, "classify", store, "--k", "5", "--format", "json", "--confidence", "0.99").stdout)[
        "results"
    ][0]
    narrow = json.loads(
        invoke(runner, "classify", store, "--k", "5", "--format", "json", "--confidence", "0.8").stdout
    )["results"][0]
    hits = round(wide["top1"] * 60 / 100)
    assert wide["top1_ci"] == pytest.approx(wilson_pct(hits, 60, 0.99), abs=1e-4)
    assert narrow["top1_ci"] == pytest.approx(wilson_pct(hits, 60, 0.8), abs=1e-4)
    assert narrow["top1_ci"][0] > wide["top1_ci"][0] and narrow["top1_ci"][1] < wide["top1_ci"][1]


def test_classify_table_shows_half_width_and_csv_both_ends(runner, store):
    doc = json.loads(invoke(runner, "classify", store, "--k", "5", "--format", "json").stdout)
    nnk = doc["results"][0]
    table = invoke(runner, "classify", store, "--k", "5", "-q").stdout
    lo, hi = nnk["top1_ci"]
    assert f"{nnk['top1']:.2f} ±{(hi - lo) / 2:.2f}" in table.splitlines()[3]
    rows = list(csv.reader(io.StringIO(invoke(runner, "classify", store, "--k", "5", "--format", "csv").stdout)))
    assert rows[0] == [
        "method",
        "k",
        "top1",
        "top1_ci_low",
        "top1_ci_high",
        "top5",
        "top5_ci_low",
        "top5_ci_high",
        "balanced_accuracy",
        "balanced_accuracy_ci_low",
        "balanced_accuracy_ci_high",
        "n_queries",
        "support_mean",
    ]
    assert [float(x) for x in rows[1][2:5]] == [nnk["top1"], lo, hi]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "100.5"])
@pytest.mark.parametrize("command", ["classify", "sweep"])
def test_gate_values_must_be_finite_percentages(runner, store, command, value):
    res = invoke(runner, command, store, "--k", "5", "--min-top1", value)
    assert res.exit_code == 2
    assert (
        f"Invalid value for '--min-top1': must be a finite percentage in [0, 100] (got {float(value)!r})" in res.stderr
    )


@pytest.mark.parametrize("value", ["0", "1", "nan", "1.5"])
def test_confidence_must_be_strictly_between_0_and_1(runner, store, value):
    res = invoke(runner, "classify", store, "--k", "5", "--confidence", value)
    assert res.exit_code == 2
    assert f"Invalid value for '--confidence': must be strictly between 0 and 1 (got {float(value)!r})" in res.stderr


def test_gate_method_gates_only_that_method(runner, store):
    # at k = 5 this store gives NNK 80.00 % and k-NN 78.33 %
    doc = json.loads(invoke(runner, "classify", store, "--k", "5", "--format", "json").stdout)
    assert [(r["method"], r["top1"]) for r in doc["results"]] == [("nnk", 80.0), ("knn", 78.3333)]
    assert invoke(runner, "classify", store, "--k", "5", "--min-top1", "79", "--gate-method", "nnk").exit_code == 0
    for gm in ("knn", "all"):
        res = invoke(runner, "classify", store, "--k", "5", "--min-top1", "79", "--gate-method", gm, "-q")
        assert res.exit_code == 3
        assert res.stderr.splitlines()[0] == "Error: quality gate failed: knn top1 78.33 < 79 (k=5)"
    res = invoke(runner, "classify", store, "--k", "5", "--method", "knn", "--min-top1", "1", "--gate-method", "nnk")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == "Error: --gate-method nnk is not among the methods run (--method knn)"


def test_sweep_gate_method(runner, store):
    ok = invoke(runner, "sweep", store, "--k", "5,10", "--min-top1", "79.5", "--gate-method", "nnk", "-q")
    assert ok.exit_code == 0
    bad = invoke(runner, "sweep", store, "--k", "5,10", "--min-top1", "80.5", "--gate-method", "nnk", "-q")
    assert bad.exit_code == 3 and "nnk top1 80.00 < 80.5 (k=5)" in bad.stderr


def test_sweep_marks_the_k_not_significantly_below_the_best_by_mcnemar(runner, store, tmp_path):
    """Oracle: per-query predictions of `classify --out` at each k, and scipy's binomtest."""
    ks = [1, 5, 10, 20, 50]
    res = invoke(runner, "sweep", store, "--k", ",".join(map(str, ks)), "--format", "json", "--alpha", "0.2")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    for method in ("nnk", "knn"):
        right = {}
        for k in ks:
            out = tmp_path / f"{method}{k}.h5"
            assert invoke(runner, "classify", store, "--k", k, "--method", method, "--out", out, "-q").exit_code == 0
            with h5py.File(out, "r") as f:
                right[k] = f[f"{method}/top5"][:, 0] == f["labels"][:]
        best = doc["best"][method]
        assert best["alpha"] == 0.2
        expected = []
        for k in ks:
            if k == best["k"]:
                continue
            a_only = int((right[best["k"]] & ~right[k]).sum())
            b_only = int((right[k] & ~right[best["k"]]).sum())
            p = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
            if p >= 0.2:
                expected.append(k)
        assert best["tied_k"] == expected
        assert best["recommended_k"] == min([best["k"], *expected])
        assert best["significant"] is (not expected)
    table = invoke(runner, "sweep", store, "--k", "1,5,10,20,50", "--alpha", "0.2", "-q").stdout
    assert "~ not significantly below the best (McNemar p >= 0.2); smallest such k: " in table
    csv_rows = list(
        csv.DictReader(
            io.StringIO(
                invoke(runner, "sweep", store, "--k", "1,5,10,20,50", "--alpha", "0.2", "--format", "csv").stdout
            )
        )
    )
    tied = [int(r["k"]) for r in csv_rows if r["method"] == "nnk" and r["tied_with_best"] == "True"]
    assert tied == doc["best"]["nnk"]["tied_k"]


def test_sweep_alpha_is_checked(runner, store):
    res = invoke(runner, "sweep", store, "--k", "5", "--alpha", "0")
    assert res.exit_code == 2 and "Invalid value for '--alpha'" in res.stderr
