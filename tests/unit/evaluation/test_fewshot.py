"""``nnkcli.evaluation.fewshot`` against oracles written here from the definitions.

k-NN (DINO): per query, the k most similar rows of the subset (cosine of the L2-normalised rows,
ties by row id), each voting exp(s / T) for its class. Exact NNK: per query, scipy's NNLS on the
feature-space form of the normalised cosine kernel (1 + cos) / 2 over the same k rows, each voting
its weight. Both are loops over the queries and the subset's rows; nothing of nnkcli is called.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import nnls

from nnkcli.errors import InputError, OptionError
from nnkcli.evaluation.fewshot import fewshot, per_class_counts
from nnkcli.storage.store import write_split

N_CLASSES = 3


def unit64(X):
    X = np.asarray(X, dtype=np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float64)


def top1_oracle(xt, yt, xq, yq, rows, k, temperature=0.07):
    """Top-1 (%) of k-NN and exact NNK over the subset ``rows`` of the train rows, by a loop."""
    V, Q = unit64(xt[rows]), unit64(xq)
    y = yt[rows]
    k = min(k, len(rows))
    hits = {"knn": 0, "nnk": 0}
    for q, label in zip(Q, yq, strict=True):
        sims = V @ q
        order = sorted(range(len(rows)), key=lambda j: (-sims[j], rows[j]))[:k]
        s = sims[order]
        knn = np.zeros(N_CLASSES)
        for j, sj in zip(order, s, strict=True):
            knn[y[j]] += np.exp(sj / temperature)
        A = np.vstack([np.ones(k), V[order].T]) / np.sqrt(2)
        b = np.concatenate([[1.0], q]) / np.sqrt(2)
        theta = nnls(A, b, maxiter=100 * k)[0]
        nnk = np.zeros(N_CLASSES)
        for j, w in zip(order, theta, strict=True):
            nnk[y[j]] += w
        hits["knn"] += int(np.argmax(knn) == label)
        hits["nnk"] += int(np.argmax(nnk) == label)
    return {m: 100.0 * h / len(yq) for m, h in hits.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 3-class store (60 train rows with ids ``train/c<class>/img_<row>.png``, 40 queries): (path, arrays)."""
    rng = np.random.default_rng(5)
    means = rng.normal(size=(N_CLASSES, 6)) * 1.2
    yt = np.arange(60) % N_CLASSES
    yq = rng.integers(0, N_CLASSES, 40)
    xt = (means[yt] + rng.normal(size=(60, 6))).astype(np.float32)
    xq = (means[yq] + rng.normal(size=(40, 6))).astype(np.float32)
    path = tmp_path_factory.mktemp("fewshot") / "s.h5"
    ids = [f"train/c{c}/img_{i}.png" for i, c in enumerate(yt)]
    write_split(path, "train", xt, yt, ids=ids, source="test")
    write_split(path, "val", xq, yq, source="test")
    return path, (xt, yt, xq, yq)


def row(doc, per_class, method, k):
    return next(r for r in doc["results"] if (r["per_class"], r["method"], r["k"]) == (per_class, method, k))


def test_a_subset_file_gives_the_oracles_accuracy(data, tmp_path):
    """Ids, base names and row indices, in any order, with comments and a duplicate: the subset's exact top-1."""
    path, (xt, yt, xq, yq) = data
    rows = [3, 4, 10, 17, 22, 31, 45, 58]
    f = tmp_path / "subset.txt"
    lines = ["# a comment", f"train/c{yt[3]}/img_3.png", "img_58.png", "", "45", "  22 ", "img_10.png", "17", "4"]
    f.write_text("\n".join([*lines, "31", "4"]) + "\n")
    res = fewshot(path, subset_file=f, k=[5, 100], threads=1)
    doc = res.to_dict()
    assert doc["subsets"][0]["rows"] == rows
    assert doc["subsets"][0]["ids"][0] == "train/c0/img_3.png"
    for k in (5, 100):
        want = top1_oracle(xt, yt, xq, yq, np.array(rows), k)
        for method in ("knn", "nnk"):
            r = row(doc, None, method, k)
            assert r["top1"] == pytest.approx(want[method], abs=1e-9), (method, k)
            assert r["k_used"] == min(k, 8) and r["tries"] == 1 and r["top1_std"] is None
    assert doc["k_capped"] == [{"per_class": None, "k": [100], "k_used": 8, "train_rows": 8}]
    assert doc["interval"]["method"].startswith("wilson")


def test_draws_are_balanced_and_each_try_is_reproduced_from_its_recorded_rows(data, tmp_path):
    path, (xt, yt, xq, yq) = data
    res = fewshot(path, per_class="2,3", tries=2, seed=7, k=4, threads=1)
    doc = json.loads(json.dumps(res.to_dict()))  # what --format json gives
    assert [(s["per_class"], s["try"], s["seed"]) for s in doc["subsets"]] == [
        (2, 0, [7, 2, 0]),
        (2, 1, [7, 2, 1]),
        (3, 0, [7, 3, 0]),
        (3, 1, [7, 3, 1]),
    ]
    for sub in doc["subsets"]:
        counts = np.bincount(yt[sub["rows"]], minlength=N_CLASSES)
        assert counts.tolist() == [sub["per_class"]] * N_CLASSES
        assert sub["rows"] == sorted(set(sub["rows"]))
    assert doc["subsets"][0]["rows"] != doc["subsets"][1]["rows"]
    for i, sub in enumerate(doc["subsets"]):
        want = top1_oracle(xt, yt, xq, yq, np.array(sub["rows"]), 4)
        for method in ("knn", "nnk"):
            assert row(doc, sub["per_class"], method, 4)["top1_tries"][sub["try"]] == pytest.approx(want[method])
        if i == 3:  # the recorded ids, as a subset file, give that try's numbers again
            f = tmp_path / "try.txt"
            f.write_text("\n".join(sub["ids"]))
            again = fewshot(path, subset_file=f, k=4, threads=1).to_dict()
            for method in ("knn", "nnk"):
                assert row(again, None, method, 4)["top1"] == row(doc, 3, method, 4)["top1_tries"][1]
    r = row(doc, 3, "nnk", 4)
    assert r["top1"] == pytest.approx(np.mean(r["top1_tries"]), abs=1e-3)
    assert r["top1_std"] == pytest.approx(np.std(r["top1_tries"], ddof=1), abs=1e-3)
    assert r["top1_ci"][0] <= r["top1"] <= r["top1_ci"][1]


def test_the_result_does_not_depend_on_threads_or_chunks(data):
    path, _ = data
    a = fewshot(path, per_class=[1, 4], tries=2, k="2,8", threads=1, chunk_size=3).to_dict()
    b = fewshot(path, per_class=[1, 4], tries=2, k="2,8", threads=2).to_dict()
    assert a["results"] == b["results"] and a["subsets"] == b["subsets"]


def test_rows_and_try_rows(data):
    path, _ = data
    res = fewshot(path, per_class=2, tries=2, k=3, methods="knn", threads=1)
    (summary,) = res.rows()
    assert list(summary)[:5] == ["per_class", "method", "k", "k_used", "temperature"]
    assert "top1_tries" not in summary and summary["top1_ci_low"] <= summary["top1"]
    assert [(r["try"], r["top1"]) for r in res.try_rows()] == list(enumerate(res["results"][0]["top1_tries"]))


def test_bad_settings_and_data(data, tmp_path):
    path, _ = data
    with pytest.raises(OptionError, match="--per-class"):
        per_class_counts("1,0", "--per-class")
    with pytest.raises(OptionError):
        fewshot(path, tries=0)
    with pytest.raises(OptionError, match="exclude"):
        fewshot(path, exclude_self=True)
    with pytest.raises(InputError, match="query split is the train split"):
        fewshot(path, query_split="train")
    bad = tmp_path / "bad.txt"
    bad.write_text("img_1.png\nnope.png\n999\n")
    with pytest.raises(InputError, match=r"2 of 3 entries name no train row: 'nope.png', '999'"):
        fewshot(path, subset_file=bad)
