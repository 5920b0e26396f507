"""`nnk compare`: paired results against an oracle computed here from the prediction files, exact
errors and exit codes."""

from __future__ import annotations

import json
from functools import partial

import h5py
import numpy as np
import pytest
from scipy.stats import binomtest

import nnk_data
from nnk_cli import invoke
from nnk_data import NAMES, mixture
from nnkcli.evaluation import compare as cmp

# 80 queries with ids; ``noise`` changes the train rows only
STORE = dict(n_query=80, query_noise=1.2, ids="q{:03d}")
pytestmark = pytest.mark.store(**STORE)
make_store = partial(nnk_data.make_store, **STORE)


def predictions(runner, store, path, k, method="both"):
    res = invoke(runner, "classify", store, "--k", k, "--method", method, "--out", path, "-q")
    assert res.exit_code == 0, res.stderr
    return path


def oracle(pa, pb, ma, mb):
    """Counts read straight from the two files with h5py, tests from scipy."""
    with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
        y = fa["labels"][:]
        ta, tb = fa[f"{ma}/top5"][:], fb[f"{mb}/top5"][:]
    keep = y >= 0
    y, ta, tb = y[keep], ta[keep], tb[keep]
    out = {}
    for name, hit in (("top1", lambda t: t[:, 0] == y), ("top5", lambda t: (t == y[:, None]).any(axis=1))):
        ha, hb = hit(ta), hit(tb)
        a_only, b_only = int((ha & ~hb).sum()), int((hb & ~ha).sum())
        p = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        out[name] = dict(
            a=100 * ha.mean(), b=100 * hb.mean(), a_only=a_only, b_only=b_only, p=p, n=y.size, ha=ha, hb=hb
        )
    out["y"] = y
    return out


def naive_paired_bootstrap(hits_a, hits_b, *, n_boot, seed, confidence=0.95):
    """The percentile interval of acc(B) - acc(A) in points: resample the queries with replacement,
    each keeping its pair of hits, one resample at a time."""
    rng = np.random.default_rng(seed + 1)  # other draws than the implementation's
    n = hits_a.size
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, n, size=n)
        diffs[i] = hits_b[rows].mean() - hits_a[rows].mean()
    return list(100 * np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2]))


def check_against_oracle(doc, o, n_boot=10_000, seed=0):
    t1 = o["top1"]
    assert doc["a"]["top1"] == pytest.approx(t1["a"], abs=1e-4) and doc["b"]["top1"] == pytest.approx(t1["b"], abs=1e-4)
    assert doc["a"]["n"] == doc["b"]["n"] == t1["n"]
    assert doc["mcnemar"] == {"a_only": t1["a_only"], "b_only": t1["b_only"], "p_value": pytest.approx(t1["p"])}
    assert doc["difference"]["points"] == pytest.approx(t1["b"] - t1["a"], abs=1e-4)
    # the bootstrap draws differ from the implementation's (it samples counts, not rows): its percentiles
    # agree within Monte Carlo error, which on n queries is at most one query (100 / n points)
    want = naive_paired_bootstrap(t1["ha"], t1["hb"], n_boot=n_boot, seed=seed)
    assert doc["difference"]["ci"] == pytest.approx(want, abs=100 / t1["n"] + 1e-6)
    assert doc["difference"]["bootstrap"] == n_boot and doc["difference"]["seed"] == seed
    t5 = o["top5"]
    assert doc["top5"]["mcnemar"] == {"a_only": t5["a_only"], "b_only": t5["b_only"], "p_value": pytest.approx(t5["p"])}
    assert doc["significant"] is bool(t1["p"] < 0.05)
    # per class, largest |delta| first, against a per-class loop
    rows = doc["per_class"]
    assert [abs(r["delta"]) for r in rows] == sorted((abs(r["delta"]) for r in rows), reverse=True)
    for r in rows:
        c = NAMES.index(r["class"])
        sel = o["y"] == c
        assert r["n"] == int(sel.sum())
        assert r["a"] == pytest.approx(100 * t1["ha"][sel].mean(), abs=1e-4)
        assert r["b"] == pytest.approx(100 * t1["hb"][sel].mean(), abs=1e-4)
        assert r["delta"] == pytest.approx(r["b"] - r["a"], abs=1e-4)


def test_two_prediction_files_against_the_oracle(runner, store, tmp_path):
    pa = predictions(runner, store, tmp_path / "a.h5", 3)
    pb = predictions(runner, store, tmp_path / "b.h5", 25)
    res = invoke(runner, "compare", pa, pb, "--format", "json", "--per-class")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 1
    assert doc["a"]["method"] == doc["b"]["method"] == "nnk" and (doc["a"]["k"], doc["b"]["k"]) == (3, 25)
    check_against_oracle(doc, oracle(pa, pb, "nnk", "nnk"))
    knn = json.loads(
        invoke(runner, "compare", pa, pb, "--a", "knn", "--b", "nnk@25", "--format", "json", "--per-class").stdout
    )
    check_against_oracle(knn, oracle(pa, pb, "knn", "nnk"))


def test_one_store_two_classifiers_equals_the_prediction_files(runner, store, tmp_path):
    pa = predictions(runner, store, tmp_path / "a.h5", 2, "knn")
    pb = predictions(runner, store, tmp_path / "b.h5", 30, "nnk")
    res = invoke(
        runner,
        "compare",
        store,
        "--a",
        "knn@2",
        "--b",
        "nnk@30",
        "--format",
        "json",
        "--per-class",
        "--seed",
        "4",
        "--bootstrap",
        "3000",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    check_against_oracle(doc, oracle(pa, pb, "knn", "nnk"), n_boot=3000, seed=4)
    files = json.loads(
        invoke(
            runner, "compare", pa, pb, "--format", "json", "--per-class", "--seed", "4", "--bootstrap", "3000"
        ).stdout
    )
    for key in ("difference", "mcnemar", "top5", "per_class", "significant", "better", "verdict"):
        assert doc[key] == files[key]


def test_interval_at_another_confidence_on_many_queries_equals_the_naive_bootstrap(runner, tmp_path):
    """1000 queries: one query is 0.1 points, so a wrong level or a lost pairing cannot hide in the tolerance."""
    store = make_store(tmp_path / "many.h5", n_query=1000, noise=1.6, query_noise=1.6)
    pa = predictions(runner, store, tmp_path / "a.h5", 1, "knn")
    pb = predictions(runner, store, tmp_path / "b.h5", 25, "nnk")
    res = invoke(runner, "compare", pa, pb, "--confidence", "0.8", "--seed", "2", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc, t1 = json.loads(res.stdout), oracle(pa, pb, "knn", "nnk")["top1"]
    assert t1["a_only"] > 20 and t1["b_only"] > 20  # a real spread to resample
    want = naive_paired_bootstrap(t1["ha"], t1["hb"], n_boot=10_000, seed=2, confidence=0.8)
    assert doc["difference"]["ci"] == pytest.approx(want, abs=100 / 1000 + 1e-6)


def test_two_stores_with_the_same_queries(runner, tmp_path):
    query = mixture(80, 12, 1)
    sa = make_store(tmp_path / "old.h5", query=query, train_seed=0, noise=1.2)
    sb = make_store(tmp_path / "new.h5", query=query, train_seed=5, noise=0.6)
    pa = predictions(runner, sa, tmp_path / "pa.h5", 10, "nnk")
    pb = predictions(runner, sb, tmp_path / "pb.h5", 10, "nnk")
    res = invoke(runner, "compare", sa, sb, "--k", "10", "--format", "json", "--per-class")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["a"]["source"], doc["b"]["source"]) == (str(sa), str(sb))
    check_against_oracle(doc, oracle(pa, pb, "nnk", "nnk"))


def test_bootstrap_is_deterministic_for_a_seed(runner, store):
    args = ("compare", store, "--a", "knn@2", "--b", "nnk@30", "--format", "json", "--bootstrap", "200")
    one = json.loads(invoke(runner, *args, "--seed", "1").stdout)["difference"]
    assert one == json.loads(invoke(runner, *args, "--seed", "1").stdout)["difference"]
    others = {tuple(json.loads(invoke(runner, *args, "--seed", s).stdout)["difference"]["ci"]) for s in "2345"}
    assert len(others | {tuple(one["ci"])}) > 1


def test_table_output_exact(runner, store, tmp_path):
    pa = predictions(runner, store, tmp_path / "a.h5", 3)
    pb = predictions(runner, store, tmp_path / "b.h5", 25)
    doc = json.loads(invoke(runner, "compare", pa, pb, "--format", "json").stdout)
    res = invoke(runner, "compare", pa, pb)
    assert res.exit_code == 0 and res.stderr == ""
    lines = [line.rstrip() for line in res.stdout.splitlines()]
    d, m = doc["difference"], doc["mcnemar"]
    assert lines[-3] == (
        f"top-1 B - A = {d['points']:+.2f} points, 95 % CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] "
        f"(paired bootstrap, 10000 resamples, seed 0); McNemar: A only {m['a_only']}, "
        f"B only {m['b_only']}, p = {m['p_value']:.4g}"
    )
    assert lines[-1] == doc["verdict"]
    a = doc["a"]
    half = (a["top1_ci"][1] - a["top1_ci"][0]) / 2
    assert f"{a['top1']:.2f} ±{half:.2f}" in lines[3]


def test_verdict_lines():
    base = {"confidence": 0.95, "alpha": 0.05}
    better = dict(
        base, significant=True, better="b", difference={"points": 1.3, "ci": [0.6, 2.0]}, mcnemar={"p_value": 0.0004}
    )
    assert cmp.verdict(better) == "B is better than A by 1.30 points (95 % CI 0.6 – 2.0), McNemar p = 0.0004"
    worse = dict(
        base, significant=True, better="a", difference={"points": -2.5, "ci": [-3.5, -1.25]}, mcnemar={"p_value": 3e-7}
    )
    assert cmp.verdict(worse) == "B is worse than A by 2.50 points (95 % CI 1.2 – 3.5), McNemar p = 3.0e-07"
    same = dict(
        base, significant=False, better=None, difference={"points": 0.15, "ci": [-0.5, 0.8]}, mcnemar={"p_value": 0.61}
    )
    assert cmp.verdict(same) == (
        "no significant difference: B - A = +0.15 points (95 % CI -0.5 – 0.8), McNemar p = 0.6100 >= 0.05"
    )
    assert cmp._p_text(0.0) == "< 1e-300"


def test_fail_if_worse_exits_3_only_when_b_is_significantly_worse(runner, tmp_path):
    query = mixture(300, 12, 1)
    good = make_store(tmp_path / "good.h5", query=query, noise=0.6)
    # the bad store: the same queries, a train split with shuffled labels
    bad = make_store(tmp_path / "bad.h5", query=query, noise=0.6, shuffle_train=True)
    worse = invoke(runner, "compare", good, bad, "--k", "10", "--fail-if-worse", "-q")
    assert worse.exit_code == 3
    assert worse.stderr.startswith(f"Error: B ({bad}) is significantly worse than A ({good}): B is worse than A by ")
    assert worse.stderr.splitlines()[-1] == "Hint: the comparison above was still written"
    assert "B is worse than A" in worse.stdout
    assert invoke(runner, "compare", bad, good, "--k", "10", "--fail-if-worse", "-q").exit_code == 0


def test_mismatched_query_splits_exit_1_naming_the_first_mismatch(runner, tmp_path):
    xq, yq = mixture(80, 12, 1)
    base = make_store(tmp_path / "base.h5", query=(xq, yq))
    shorter = make_store(tmp_path / "short.h5", query=(xq[:79], yq[:79]))
    relabelled = yq.copy()
    relabelled[17] = (relabelled[17] + 1) % 4
    other_labels = make_store(tmp_path / "labels.h5", query=(xq, relabelled))
    res = invoke(runner, "compare", base, shorter)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: A and B are not predictions for the same queries: A has 80 queries, B has 79",
        "Hint: compare two runs on the same query split (the same rows in the same order)",
    ]
    res = invoke(runner, "compare", base, other_labels)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2] == (
        f"Error: A and B are not predictions for the same queries: query 17 is "
        f"labelled {yq[17]} in A but {relabelled[17]} in B"
    )
    # prediction files: the same checks, and sample ids
    pa = predictions(runner, base, tmp_path / "pa.h5", 5)
    pl = predictions(runner, other_labels, tmp_path / "pl.h5", 5)
    res = invoke(runner, "compare", pa, pl)
    assert res.exit_code == 1 and "query 17 is labelled" in res.stderr
    renamed = make_store(
        tmp_path / "renamed.h5", query=(xq, yq), ids=[f"q{i:03d}" if i != 42 else "other" for i in range(80)]
    )
    pr = predictions(runner, renamed, tmp_path / "pr.h5", 5)
    res = invoke(runner, "compare", pa, pr)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2] == (
        "Error: A and B are not predictions for the same queries: query 42 has sample id 'q042' in A but 'other' in B"
    )


def test_usage_and_input_errors(runner, store, tmp_path):
    res = invoke(runner, "compare", store, "--a", "svm@3", "--b", "nnk")
    assert res.exit_code == 2
    assert (
        "Invalid value for '--a': expected METHOD[@K] with METHOD nnk, knn or linear and K >= 1 (e.g. knn@20), "
        "got 'svm@3'"
    ) in res.stderr
    res = invoke(runner, "compare", store)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: one store needs --a and --b (e.g. --a knn@20 --b nnk@50)",
        "Hint: or give two stores or two prediction files",
    ]
    res = invoke(runner, "compare", store, "--a", "nnk@5", "--b", "nnk@5")
    assert res.exit_code == 1 and res.stderr.splitlines()[-1] == "Error: --a and --b are the same classifier (nnk@5)"
    pa = predictions(runner, store, tmp_path / "a.h5", 5, "knn")
    res = invoke(runner, "compare", pa, store)
    assert res.exit_code == 1 and "compare two prediction files or two stores, not one of each" in res.stderr
    res = invoke(runner, "compare", pa, pa, "--a", "nnk")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2] == "Error: A (a.h5) has no nnk predictions (it has knn)"
    res = invoke(runner, "compare", pa, pa, "--b", "knn@7")
    assert res.exit_code == 1 and "Error: B (a.h5) was classified at k=5, not k=7" in res.stderr
    res = invoke(runner, "compare", pa, tmp_path / "missing.h5")
    assert res.exit_code == 1 and f"Error: file not found: {tmp_path / 'missing.h5'}" in res.stderr


def test_prediction_files_are_read_in_blocks(store, tmp_path, runner):
    pa = predictions(runner, store, tmp_path / "a.h5", 3)
    pb = predictions(runner, store, tmp_path / "b.h5", 25)
    whole = cmp.counts_from_prediction_files(pa, pb, None, None, block_rows=1_000_000)[0]
    for rows in (1, 7, 64):
        part = cmp.counts_from_prediction_files(pa, pb, None, None, block_rows=rows)[0]
        for key in ("n", "a_hits", "b_hits", "a_only", "b_only", "class_total", "class_a", "class_b"):
            assert np.array_equal(getattr(part, key), getattr(whole, key)), (rows, key)
