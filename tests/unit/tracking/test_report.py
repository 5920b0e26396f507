"""``report``: the numbers of sweep and probe run separately, McNemar from their hits, the cache, the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnkcli.numerics.stats import mcnemar_exact
from nnkcli.tracking.report import report

GRID = "0.1,10"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    import nnk_data

    folder = tmp_path_factory.mktemp("report")
    return [nnk_data.make_store(folder / f"ckpt_{i}.h5", noise=1.2 + i, train_seed=i) for i in range(2)]


@pytest.mark.slow
def test_the_numbers_are_those_of_sweep_and_probe_run_separately(stores):
    from nnkcli.evaluation.probe import probe
    from nnkcli.evaluation.sweeps import sweep

    doc = report(stores, k="5,10", probe_options=_grid(), threads=1).to_dict()
    assert doc["k_values"] == [5, 10] and [r["store"] for r in doc["rows"]] == [str(s) for s in stores]
    for store, row in zip(stores, doc["rows"], strict=True):
        sw = sweep(store, k="5,10", select_on="train", threads=1)
        pr = probe(store, c_grid=GRID, threads=1)
        for r in sw.results:
            assert row[r["method"]]["by_k"][str(r["k"])] == {"top1": r["top1"], "top1_ci": r["top1_ci"]}
        for method in ("nnk", "knn"):
            sel = sw["selected"][method]
            assert row[method]["selected"] == {"k": sel["k"], "top1": sel["top1"], "top1_ci": sel["top1_ci"]}
        assert row["linear"] == {"c": pr.chosen_c, "top1": pr.results[0]["top1"], "top1_ci": pr.results[0]["top1_ci"]}
        # McNemar from the two runs' per-query hits, counted here
        nnk, knn, lin = sw.best_hits["nnk"][1], sw.best_hits["knn"][1], pr.hits
        for other, key in ((knn, "nnk_vs_knn"), (lin, "nnk_vs_linear")):
            a, b = int(np.sum(nnk & ~other)), int(np.sum(other & ~nnk))
            assert row["mcnemar"][key] == {"nnk_only": a, "other_only": b, "p_value": mcnemar_exact(a, b)}


def test_a_second_run_reuses_everything_from_the_cache(stores, tmp_path, monkeypatch):
    import nnkcli.evaluation.probe as probe_module
    import nnkcli.evaluation.sweeps as sweeps_module

    first = report(stores[:1], k="5", cache_dir=tmp_path, probe_options=_grid(), threads=1).to_dict()
    assert first["cache"] == {"dir": str(tmp_path), "computed": 2, "reused": 0}
    assert len(list(tmp_path.glob("*.json"))) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(sweeps_module, "sweep", refuse)
    monkeypatch.setattr(probe_module, "probe", refuse)
    second = report(stores[:1], k="5", cache_dir=tmp_path, probe_options=_grid(), threads=1).to_dict()
    assert second["cache"]["computed"] == 0 and second["cache"]["reused"] == 2
    assert second["rows"] == json.loads(json.dumps(first["rows"]))
    # another k is another parameter set: the sweep runs again (and is refused here)
    with pytest.raises(AssertionError, match="computed again"):
        report(stores[:1], k="6", cache_dir=tmp_path, probe_options=_grid(), threads=1)


def _grid():
    from nnkcli.evaluation.probe_options import ProbeOptions

    return ProbeOptions(c_grid=GRID)


def test_the_cache_key_names_the_content_the_parameters_and_the_kind():
    from nnkcli.tracking.report import cache_key

    base = cache_key("sweep", "a" * 64, "b" * 64, {"k_values": [5]})
    assert base == cache_key("sweep", "a" * 64, "b" * 64, {"k_values": [5], "threads": 8})  # threads: not keyed
    others = {
        cache_key("probe", "a" * 64, "b" * 64, {"k_values": [5]}),
        cache_key("sweep", "c" * 64, "b" * 64, {"k_values": [5]}),
        cache_key("sweep", "a" * 64, "c" * 64, {"k_values": [5]}),
        cache_key("sweep", "a" * 64, "b" * 64, {"k_values": [6]}),
    }
    assert base not in others and len(others) == 4
