"""--select-on train (against a naive leave-one-out oracle), temperature grids, presets, provenance."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
from scipy.optimize import nnls

import nnk_data
from nnkcli.errors import InputError, OptionError
from nnkcli.evaluation.classification import classify
from nnkcli.evaluation.options import ScoringOptions, apply_protocol
from nnkcli.evaluation.protocols import PROTOCOLS, get_protocol
from nnkcli.evaluation.selection import selection_rows
from nnkcli.evaluation.sweeps import sweep

mixture = partial(nnk_data.mixture, noise=1.3)
make_store = partial(nnk_data.make_store, n_train=150, n_query=50, d=16, noise=1.3)


# -- the oracle: one query at a time, brute force, no code shared with nnkcli ---------------


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def loo_neighbors(X, i, k):
    s = X @ X[i]
    order = sorted((j for j in range(len(X)) if j != i), key=lambda j: (-s[j], j))[:k]
    return order, s[order]


def argmax_low_id(scores):
    best = max(range(len(scores)), key=lambda c: (scores[c], -c))
    return best if scores[best] > 0 else -1


def knn_pred(sims, labels, T, C):
    scores = [0.0] * C
    for s, y in zip(sims, labels):
        scores[y] += math.exp(s / T)
    return argmax_low_id(scores)


def nnk_pred(X, i, nb, labels, C):
    N = X[nb]
    G = (1 + N @ N.T) / 2
    g = (1 + N @ X[i]) / 2
    R = np.linalg.cholesky(G + 1e-12 * np.eye(len(nb))).T  # G = R^T R (k <= d: positive definite)
    theta = nnls(R, np.linalg.solve(R.T, g))[0]  # min |R t - R^-T g|^2 = 2 (1/2 t'Gt - g't) + const
    scores = [0.0] * C
    for t, y in zip(theta, labels):
        scores[y] += t
    return argmax_low_id(scores)


def oracle_selection(xt, yt, rows, k_values, temps, C=4):
    X = unit(xt)
    top1 = {}
    for k in k_values:
        hits_nnk, hits_knn = 0, dict.fromkeys(temps, 0)
        for i in rows:
            nb, s = loo_neighbors(X, i, k)
            labels = [int(yt[j]) for j in nb]
            hits_nnk += nnk_pred(X, i, nb, labels, C) == yt[i]
            for T in temps:
                hits_knn[T] += knn_pred(s, labels, T, C) == yt[i]
        top1[("nnk", k, None)] = 100 * hits_nnk / len(rows)
        for T in temps:
            top1[("knn", k, T)] = 100 * hits_knn[T] / len(rows)
    return top1


def oracle_choice(top1, method):
    keys = [key for key in top1 if key[0] == method]
    return min(keys, key=lambda key: (-top1[key], key[1], key[2] or 0.0))


def test_selection_rows_seeded_sorted_and_all_rows_when_fewer():
    a = selection_rows(1000, 50, seed=3)
    assert a.tolist() == selection_rows(1000, 50, seed=3).tolist() and len(set(a.tolist())) == 50
    assert (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < 1000
    assert selection_rows(1000, 50, seed=4).tolist() != a.tolist()
    assert selection_rows(30, 50).tolist() == list(range(30))
    with pytest.raises(InputError):
        selection_rows(30, 0)


def test_leave_one_out_selection_equals_naive_oracle(tmp_path):
    path = make_store(tmp_path / "s.h5")
    xt, yt = mixture(150, 16, 0)
    k_values, temps = [1, 3, 5, 8, 12], (0.05, 0.5)
    doc = sweep(
        path, k_values=k_values, temperature=temps, select_on="train", select_queries=60, select_seed=7
    ).to_dict()
    rows = selection_rows(len(xt), 60, seed=7)
    want = oracle_selection(xt, yt, rows, k_values, temps)
    got = {(r["method"], r["k"], r.get("temperature")): r["top1"] for r in doc["selection"]["results"]}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-3), key  # rounded to 4 decimals
    for method in ("nnk", "knn"):
        _, k, T = oracle_choice(want, method)
        sel = doc["selected"][method]
        assert sel["k"] == k and sel.get("temperature") == T
        assert sel["selection_top1"] == pytest.approx(want[(method, k, T)], abs=1e-3)
        assert sel["selection_queries"] == 60
        # the reported accuracy is the query split's row at the chosen (k, T)
        row = next(r for r in doc["results"] if r["method"] == method and r["k"] == k and r.get("temperature") == T)
        assert sel["top1"] == row["top1"] and sel["top5"] == row["top5"]


def test_selection_never_reads_query_labels(tmp_path):
    perm = np.random.default_rng(5).permutation(50)
    a = make_store(tmp_path / "a.h5")
    b = make_store(tmp_path / "b.h5", query_labels=lambda y: y[perm])
    c = make_store(tmp_path / "c.h5", query_labels=lambda y: np.full_like(y, -1))
    docs = [
        sweep(p, k_values=[2, 5, 10, 20], temperature=(0.02, 0.1), select_on="train", select_queries=80).to_dict()
        for p in (a, b, c)
    ]
    strip = [{m: (e["k"], e.get("temperature"), e["selection_top1"]) for m, e in d["selected"].items()} for d in docs]
    assert strip[0] == strip[1] == strip[2]
    assert docs[0]["best"] != docs[1]["best"] or docs[0]["results"] != docs[1]["results"]
    assert all(math.isnan(e["top1"]) for e in docs[2]["selected"].values())  # unlabelled: still a choice


def test_selection_needs_a_k_below_the_train_size(tmp_path):
    path = make_store(tmp_path / "s.h5", n_train=20)
    with pytest.raises(InputError, match="leave-one-out selection"):
        sweep(path, k_values=[5, 20], select_on="train")
    with pytest.raises(OptionError, match="^select_on: "):
        sweep(path, k_values=[5], select_on="val")


def test_temperature_grid_equals_separate_runs(tmp_path):
    path = make_store(tmp_path / "s.h5")
    temps = (0.02, 0.05, 0.07, 0.1, 0.2)
    grid = classify(path, k=10, methods="knn", temperature=temps)
    rows = {r["temperature"]: r for r in grid["results"]}
    assert list(rows) == list(temps)
    for T in temps:
        alone = classify(path, k=10, methods="knn", temperature=T)["results"][0]
        assert alone["temperature"] == T
        assert dict(rows[T]) == alone
    swept = sweep(path, k_values=[5, 10], methods="knn", temperature=temps).to_dict()
    assert len(swept["results"]) == 2 * len(temps)
    best = max(swept["results"], key=lambda r: (r["top1"], -r["k"], -r["temperature"]))
    assert (swept["best"]["knn"]["k"], swept["best"]["knn"]["temperature"]) == (best["k"], best["temperature"])


def test_each_preset_sets_what_its_source_does(tmp_path):
    path = make_store(tmp_path / "s.h5", n_train=250)
    expect = {  # name: (sweep k values, classify k, T, top-5 rule, solver)
        "nnkcli": (list(range(10, 201, 10)), 50, 0.07, "strict", "exact"),
        "dino": ([10, 20, 100, 200], 20, 0.07, "strict", "exact"),
        "dinov2": ([10, 20, 100, 200], 20, 0.07, "inclusive", "exact"),
        "instdisc": ([200], 200, 0.07, "inclusive", "exact"),
        "vissl": ([200], 200, 0.1, "inclusive", "exact"),
        "nnk-paper": ([50], 50, 0.07, "inclusive", "pruning"),
    }
    assert set(expect) == set(PROTOCOLS)
    for name, (ks, k1, T, rule, solver) in expect.items():
        r = ScoringOptions(**apply_protocol({"protocol": name}))
        assert (list(r.k_values), r.temperature, r.top5_rule, r.solver) == (ks, T, rule, solver)
        assert apply_protocol({"protocol": name}, one_k=True)["k_values"] == (k1,)
        doc = classify(path, protocol=name, methods="knn")
        p = doc["parameters"]
        assert (doc["k"], p["temperature"], p["top5_rule"], p["solver"], p["protocol"]) == (k1, T, rule, solver, name)
    # explicit options override the preset
    doc = classify(path, protocol="vissl", k=30, temperature=0.07, top5_rule="strict", methods="knn")
    p = doc["parameters"]
    assert (doc["k"], p["temperature"], p["top5_rule"], p["protocol"]) == (30, 0.07, "strict", "vissl")
    with pytest.raises(InputError, match="unknown protocol"):
        get_protocol("simclr")
    with pytest.raises(OptionError, match="^protocol: "):
        classify(path, protocol="simclr")


def test_inclusive_rule_changes_only_top5_and_only_upwards(tmp_path):
    path = make_store(tmp_path / "s.h5")
    strict = classify(path, k=3)["results"]
    inclusive = classify(path, k=3, top5_rule="inclusive")["results"]
    for s, i in zip(strict, inclusive):
        assert s["top1"] == i["top1"]
        assert i["top5"] >= s["top5"]
    assert any(i["top5"] > s["top5"] for s, i in zip(strict, inclusive))  # k=3 < 5: zero-score classes count


def test_pruning_solver_in_the_evaluation_reports_its_cost(tmp_path):
    path = make_store(tmp_path / "s.h5")
    doc = classify(path, k=20, methods="nnk", solver="pruning")
    row = doc["results"][0]
    assert row["solver"] == "pruning" and doc["parameters"]["solver"] == "pruning"
    assert 0.0 <= row["kkt_failure_fraction"] <= 1.0 and row["objective_gap_mean"] >= 0.0
    exact = classify(path, k=20, methods="nnk")["results"][0]
    assert exact["solver"] == "exact" and "kkt_failure_fraction" not in exact
    with pytest.raises(OptionError, match="cosine kernel only"):
        classify(path, k=20, solver="pruning", kernel="gaussian")


def test_provenance_difference_warns_and_strict_refuses(tmp_path, caplog):
    path = make_store(
        tmp_path / "s.h5",
        train_attrs={"model": "torchvision:resnet50", "crop": 224},
        query_attrs={"model": "torchvision:resnet50", "crop": 160},
    )
    doc = classify(path, k=5)
    assert len(doc["warnings"]) == 1 and "crop: 224 vs 160" in doc["warnings"][0]
    assert "differ in provenance" in caplog.text
    with pytest.raises(InputError, match="crop: 224 vs 160"):
        classify(path, k=5, strict_provenance=True)
    with pytest.raises(InputError, match="differ in provenance"):
        sweep(path, k_values=[5], strict_provenance=True)
    same = make_store(tmp_path / "t.h5", train_attrs={"crop": 224}, query_attrs={"crop": 224})
    assert classify(same, k=5, strict_provenance=True)["warnings"] == []


def test_provenance_compares_the_extraction_preset_and_features(tmp_path):
    # nnk extract records --protocol, --features and --layer only when given (older splits compare equal)
    path = make_store(
        tmp_path / "s.h5",
        train_attrs={"protocol": "dino", "features": "last4"},
        query_attrs={"protocol": "dinov2", "layer": "avgpool"},
    )
    (warning,) = classify(path, k=5)["warnings"]
    assert "protocol: dino vs dinov2" in warning
    assert "features: last4 vs (not recorded)" in warning and "layer: (not recorded) vs avgpool" in warning


@pytest.mark.parametrize("shards, threads, chunk_size", [(None, 1, 7), (None, 2, None), (3, 2, 5)])
def test_selection_through_the_pipeline_equals_the_oracle(tmp_path, shards, threads, chunk_size):
    """Threads, sub-chunks and a sharded index (its own search path) select exactly as the oracle."""
    from nnkcli.shards import index_store_sharded

    path = make_store(tmp_path / "s.h5")
    xt, yt = mixture(150, 16, 0)
    if shards:
        index_store_sharded(path, n_shards=shards)
    k_values, temps = [1, 4, 9], (0.07,)
    doc = sweep(
        path,
        k_values=k_values,
        temperature=temps,
        select_on="train",
        select_queries=45,
        select_seed=3,
        threads=threads,
        chunk_size=chunk_size,
    ).to_dict()
    want = oracle_selection(xt, yt, selection_rows(len(xt), 45, seed=3), k_values, temps)
    got = {(r["method"], r["k"], r.get("temperature")): r["top1"] for r in doc["selection"]["results"]}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-3), key
