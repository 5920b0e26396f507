"""What a tracker receives from a result document: names, values, identities (no tracker library)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.tracking.export import TrackedRun, flatten, tracked_runs
from nnkcli.tracking.paramsets import parameter_key


def sweep_doc(store="/data/epoch_7.h5", *, selected=False, temps=(0.07,)):
    results = []
    for k, (a, b) in {5: (80.0, 78.5), 10: (82.5, 79.0)}.items():
        results.append({"method": "nnk", "k": k, "top1": a, "top5": 95.0, "top1_ci": [a - 2, a + 2]})
        for t in temps:
            results.append({"method": "knn", "k": k, "temperature": t, "top1": b + t, "top5": 94.0})
    best = {"nnk": {"k": 10, "top1": 82.5, "top5": 95.0, "top1_ci": [80.5, 84.5]}, "knn": {"k": 10, "top1": 79.07}}
    doc = {
        "store": store,
        "train_split": "train",
        "query_split": "val",
        "n_train": 300,
        "n_queries": 60,
        "n_classes": 4,
        "parameters": {"methods": ["nnk", "knn"], "k_values": [5, 10], "threads": None, "kernel": "cosine"},
        "results": results,
        "k_values": [5, 10],
        "best": best,
    }
    if selected:
        doc["selected"] = {"nnk": {"k": 5, "top1": 80.0}, "knn": {"k": 5, "top1": 78.57}}
    return doc


def test_sweep_metrics_each_k_and_the_chosen_one():
    [run] = tracked_runs(sweep_doc())
    m = run.metrics
    assert m["nnk/top1@5"] == 80.0 and m["nnk/top1@10"] == 82.5 and m["knn/top1@5"] == pytest.approx(78.57)
    assert m["nnk/top1@10_low"] == 80.5 and m["nnk/top1@10_high"] == 84.5
    assert "knn/top1@5_low" not in m  # no interval in the row: none made up
    assert (m["nnk/top1"], m["nnk/k"], m["nnk/top1_low"], m["nnk/top1_high"]) == (82.5, 10, 80.5, 84.5)
    assert (m["knn/top1"], m["knn/k"]) == (79.07, 10)
    assert not any(name.startswith(("nnk/best", "quality/")) for name in m)
    assert run.kind == "sweep" and run.step == 7 and run.name == "step 7"  # the step in the file name
    assert run.sweep is not None  # two k: a figure to draw
    assert run.params["store"] == "/data/epoch_7.h5" and run.params["k_values"] == [5, 10]
    assert "threads" not in run.params  # None: left out
    assert run.tags["nnk.kind"] == "sweep" and run.tags["nnk.key"] == run.key


def test_select_on_train_is_the_chosen_k_and_the_best_is_kept_beside():
    [run] = tracked_runs(sweep_doc(selected=True))
    m = run.metrics
    assert (m["nnk/top1"], m["nnk/k"]) == (80.0, 5)
    assert (m["nnk/best_top1"], m["nnk/best_k"]) == (82.5, 10)


def test_a_temperature_grid_names_each_temperature():
    [run] = tracked_runs(sweep_doc(temps=(0.05, 0.1)))
    assert run.metrics["knn/top1@5_T0.05"] == pytest.approx(78.55)
    assert run.metrics["knn/top1@10_T0.1"] == pytest.approx(79.1)
    assert "knn/top1@5" not in run.metrics and "nnk/top1@5" in run.metrics  # nnk has one temperature


def test_identity_follows_store_step_and_parameters():
    key = tracked_runs(sweep_doc())[0].key
    assert tracked_runs(sweep_doc())[0].key == key  # deterministic
    assert tracked_runs(sweep_doc(), step=8)[0].key != key
    assert tracked_runs(sweep_doc(store="/data/epoch_8.h5"))[0].key != key
    other = sweep_doc()
    other["parameters"] = dict(other["parameters"], kernel="dot")
    assert tracked_runs(other)[0].key != key
    same = sweep_doc()
    same["parameters"] = dict(same["parameters"], threads=8)  # does not change a number: same run
    assert tracked_runs(same)[0].key == key
    run = tracked_runs(sweep_doc())[0]
    assert run.run_id("a") == run.run_id("a") != run.run_id("b")
    assert run.run_id("a") == "nnk-" + hashlib.sha256(f"a\0{key}".encode()).hexdigest()[:24]


def test_classify_document_one_k_and_no_figure():
    doc = {k: v for k, v in sweep_doc(store="/data/plain.h5").items() if k not in ("best", "k_values")}
    doc["results"] = [r for r in doc["results"] if r["k"] == 5]
    [run] = tracked_runs(doc)
    assert run.kind == "classify" and run.step is None and run.name == "plain.h5" and run.sweep is None
    assert (run.metrics["nnk/top1"], run.metrics["nnk/k"], run.metrics["nnk/top1@5"]) == (80.0, 5, 80.0)


def entry(sha="ab" * 32, step=3, **extra):
    parameters = {"k_values": [5, 10], "methods": ["nnk"], "train_split": "train", "query_split": "val"}
    return {
        "source": f"/runs/ckpt_{step}.pth",
        "sha256": sha,
        "step": step,
        "parameters": parameters,
        "params_key": parameter_key(parameters),
        "results": [
            {"method": "nnk", "k": 5, "top1": 70.0, "top1_ci": [65.0, 75.0]},
            {"method": "nnk", "k": 10, "top1": 71.0},
        ],
        "best": {"nnk": {"k": 10, "top1": 71.0}},
        "quality": {"rankme": 12.5, "alpha_req": None, "loo_nnk_top1": float("nan")},
        **extra,
    }


def test_history_entries_one_run_each_keyed_by_sha256_and_parameters():
    runs = tracked_runs({"entries": [entry(), entry(sha="cd" * 32, step=None)]})
    assert [r.name for r in runs] == ["step 3", "ckpt_None.pth"]
    assert runs[0].key == hashlib.sha256(f"evaluate\0{'ab' * 32}\0{entry()['params_key']}".encode()).hexdigest()
    assert runs[0].group == f"params-{entry()['params_key']}" == runs[1].group
    assert runs[0].metrics["quality/rankme"] == 12.5
    assert "quality/alpha_req" not in runs[0].metrics and "quality/loo_nnk_top1" not in runs[0].metrics
    assert runs[0].metrics["nnk/top1@5_low"] == 65.0 and runs[0].metrics["nnk/top1"] == 71.0
    assert runs[0].params["sha256"] == "ab" * 32 and runs[0].tags["nnk.sha256"] == "ab" * 32
    assert runs[0].sweep is not None and runs[0].sweep["best"] == entry()["best"]
    assert tracked_runs(entry())[0].key == runs[0].key  # a single entry is a document too
    # the runner's re-evaluation (--force) of the same source is the same run; another step is not
    assert tracked_runs(entry(forced=True))[0].key == runs[0].key


def test_not_a_result_document():
    with pytest.raises(ValueError, match="not a result document"):
        tracked_runs({"history": "h.jsonl"})
    with pytest.raises(TypeError):
        tracked_runs([entry()])  # type: ignore[arg-type]


_LEAF = st.one_of(st.integers(), st.text("xy", max_size=2), st.none(), st.lists(st.integers(), max_size=2))
_KEYS = st.text("abc", min_size=1, max_size=2)


@settings(max_examples=15, deadline=None)
@given(
    st.dictionaries(_KEYS, st.recursive(_LEAF, lambda inner: st.dictionaries(_KEYS, inner, max_size=3), max_leaves=6))
)
def test_flatten_keeps_every_leaf_under_its_dotted_path(nested):
    def leaves(value, path=()):  # the oracle: a plain walk
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(v, (*path, k))
        elif value is not None and value != []:
            yield ".".join(path), value

    flat = flatten(nested)
    expected = dict(leaves(nested))
    assert flat == expected
    json.dumps(flat)  # JSON values only


def test_tracked_run_is_frozen():
    run = tracked_runs(sweep_doc())[0]
    assert isinstance(run, TrackedRun)
    with pytest.raises(AttributeError):
        run.name = "x"  # type: ignore[misc]
