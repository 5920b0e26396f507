"""docs/performance.md is generated from benchmarks/results/*/*.json and cannot drift from them."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load("gen_performance", ROOT / "docs" / "gen_performance.py")
report = _load("bench_report", ROOT / "benchmarks" / "_report.py")


def test_the_page_is_what_the_generator_writes():
    """Edit the JSON (rerun a benchmark with --json) and regenerate; never the page by hand."""
    expected = gen.render(gen.load_results())
    assert (ROOT / "docs" / "performance.md").read_text() == expected, "run: python docs/gen_performance.py"


def test_every_recorded_run_is_filed_under_its_own_machine_kind():
    for path in sorted(gen.RESULTS.glob("*/*.json")):
        doc = json.loads(path.read_text())
        assert doc["schema_version"] == 1
        assert path.parent.name == report.machine_kind(doc["machine"]), path
        assert path.stem == doc["benchmark"], path
        assert doc["command"].startswith(f"python benchmarks/{doc['benchmark']}.py"), doc["command"]


@pytest.fixture
def evaluator_run() -> dict:
    return {
        "schema_version": 1,
        "benchmark": "bench_evaluator",
        "command": "python benchmarks/bench_evaluator.py --quick --json /somewhere/deep/run.json",
        "date": "2026-12-06T01:00:00+00:00",
        "machine": {
            "cpu_model": "AMD EPYC 7B13",
            "cpu_family": "25",
            "cpu_model_number": "1",
            "cpu_flags": ["avx", "avx2", "fma"],
            "cores": 4,
            "cores_available": 2,
            "load_average": [0.5, 0.4, 0.3],
            "blas": [],
        },
        "measurements": {
            "n_train": 10_000,
            "n_query": 2_000,
            "dim": 128,
            "k": "10..200",
            "repeats": 2,
            "rounds": [
                {"memory_s": 2.0, "library_s": 3.0, "cli_s": 5.0, "write_s": 0.1},
                {"memory_s": 4.0, "library_s": 2.0, "cli_s": 4.0, "write_s": 0.2},
            ],
            "memory_s": 2.0,
            "library_s": 2.0,
            "cli_s": 4.0,
            "write_s": 0.1,
            "best": {"nnk": {"k": 40, "top1": 72.0}},
        },
    }


def test_ratios_are_against_the_baseline_of_the_same_round(evaluator_run):
    text = "\n".join(gen.render_evaluator(evaluator_run))
    assert "| 1 | 2.00 | 3.00 (1.50x) | 5.00 (2.50x) | 0.10 |" in text
    assert "| 2 | 4.00 | 2.00 (0.50x) | 4.00 (1.00x) | 0.20 |" in text
    assert "| min | 2.00 | 2.00 (1.00x) | **4.00 (2.00x)** | 0.10 |" in text


def test_each_table_names_its_cpu_and_machine_kinds_get_their_own_section(tmp_path, evaluator_run):
    other = copy.deepcopy(evaluator_run)
    other["machine"].update(cpu_model="Intel(R) Xeon(R) Platinum 8481C CPU", cpu_family="6", cpu_model_number="143")
    other["machine"]["cpu_flags"] = ["avx2", "avx512f", "amx_tile"]
    runs = []
    for i, doc in enumerate((evaluator_run, other)):
        runs.append(tmp_path / f"run{i}.json")
        runs[-1].write_text(json.dumps(doc))
    results = tmp_path / "results"
    written = gen.record(runs, results)
    kinds = [p.parent.name for p in written]
    assert kinds == ["amd-epyc-7b13-f25m1-avx2-2c", "intel-xeon-platinum-8481c-f6m143-amx-2c"]
    page = gen.render(gen.load_results(results))
    assert page.count("\n## ") == 2
    assert "AMD EPYC 7B13 (family 25 model 1, flags: avx avx2 fma), 2 of 4 cores" in page
    assert "flags: avx2 avx512f amx_tile" in page
    assert "`python benchmarks/bench_evaluator.py --quick --json run.json`" in page  # no local path


def test_a_newer_run_of_the_same_kind_replaces_the_older(tmp_path, evaluator_run):
    results = tmp_path / "results"
    for cli_s in (4.0, 3.0):
        evaluator_run["measurements"]["cli_s"] = cli_s
        run = tmp_path / "run.json"
        run.write_text(json.dumps(evaluator_run))
        gen.record([run], results)
    (only,) = results.glob("*/*.json")
    assert json.loads(only.read_text())["measurements"]["cli_s"] == 3.0
    assert "**3.00 (1.50x)**" in gen.render(gen.load_results(results))


def test_write_json_records_the_machine_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(ROOT / "benchmarks" / "bench_solver.py"), "--quick"])
    out = tmp_path / "sub" / "run.json"
    report.write_json(out, "bench_solver", {"rows": []})
    doc = json.loads(out.read_text())
    assert doc["command"] == "python benchmarks/bench_solver.py --quick"
    assert doc["measurements"] == {"rows": []}
    m = doc["machine"]
    assert m["cores_available"] >= 1 and m["numpy"] and m["python"]
    assert set(m["cpu_flags"]) <= set(report.FLAGS_OF_INTEREST)
    assert [p.name for p in out.parent.iterdir()] == ["run.json"]  # no temporary file left


def test_a_pipeline_run_of_two_stores_shows_both_with_the_limits_of_its_run():
    store = {
        "n_train": 60_000,
        "n_query": 10_000,
        "dim": 784,
        "flat_search_gflops": {"faiss": 50.0, "nnkcli": 70.0},
        "runs": {
            "classify k=50 knn": {
                "wall_s": 10.0,
                "peak_rss_mib": 300.0,
                "timing": {"search_s": 6.0, "nnk_s": 0.0},
                "search_share": 0.6,
                "top1": {"knn": 85.0},
            }
        },
        "ratios": {"nnk / knn at k=50": {"value": 1.05, "target": 1.1}},
        "search_efficiency": {"50": 0.8},
        "busy": {"idle_s": 10.0, "busy_s": 30.0, "competitors": 2, "target": 2.5},
    }
    doc = {
        "benchmark": "bench_pipeline",
        "command": "python benchmarks/bench_pipeline.py --dataset both --json x.json",
        "date": "2026-12-06T01:00:00+00:00",
        "machine": {"cpu_model": "X", "cpu_flags": ["amx_bf16"], "cores": 2, "cores_available": 2},
        "measurements": {
            "threads": 2,
            "repeats": 2,
            "search_kernel": None,
            "gemm_gflops": {"float32_1": 70.0, "float32": 135.0, "bfloat16_1": 280.0, "bfloat16": 442.0},
            "gemm_rounds": [{}, {}, {}],
            "datasets": {
                "synthetic": {**store, "dataset": "synthetic", "dim": 384},
                "fashion-mnist": {**store, "dataset": "fashion-mnist"},
            },
        },
    }
    text = "\n".join(gen.render_pipeline(doc))
    assert "float32 GEMM (numpy) 70 GFLOP/s on one thread, 135 on 2; bfloat16 GEMM (torch) 280 on one thread" in text
    assert "#### synthetic store" in text and "#### Fashion-MNIST raw pixels" in text
    assert "| `classify k=50 knn` | 10.00 | 300 | 6.00 | 60% | 0.00 | – | 85.00 |" in text
    assert "| nnk / knn at k=50 | **1.05x** | ≤ 1.1x |" in text
    assert "| search rate at k = 50 / one-thread float32 GEMM | 80% (20% of bfloat16's) | ≥ 70 % |" in text
    assert "| busy machine: beside 2 CPU-bound processes / idle | 3.00x | ≤ 2.5x |" in text


def test_a_scale_run_shows_time_cpu_and_both_memories_sharded_over_flat():
    run = {"to_50k_s": 100.0, "timing": {}, "top1": {"knn": 50.0}}
    doc = {
        "benchmark": "bench_scale",
        "command": "python benchmarks/bench_scale.py --quick --json x.json",
        "date": "2026-12-06T01:00:00+00:00",
        "machine": {"cpu_model": "X", "cpu_flags": [], "cores": 2, "cores_available": 2},
        "measurements": {
            "n_train": 128_116,
            "n_query": 1_000,
            "dim": 384,
            "classes": 1000,
            "repeats": 2,
            "runs": {
                "index flat": {"wall_s": 10.0, "cpu_s": 9.0, "peak_rss_mib": 500.0, "peak_anon_mib": 450.0},
                "sweep --k 10..200 --method both (flat)": {
                    **run,
                    "wall_s": 40.0,
                    "cpu_s": 60.0,
                    "peak_rss_mib": 600.0,
                    "peak_anon_mib": 500.0,
                },
                "sweep --k 10..200 --method both (shards 4)": {
                    **run,
                    "wall_s": 44.0,
                    "cpu_s": 63.0,
                    "peak_rss_mib": 590.0,
                    "peak_anon_mib": 150.0,
                },
            },
        },
    }
    text = "\n".join(gen.render_scale(doc))
    assert "| `sweep --k 10..200 --method both (shards 4)` | 44.00 | 63.00 | 590 | 150 | 100.0 |" in text
    assert "| `sweep --k 10..200 --method both` | **1.10x** | 1.05x | 30% | 98% |" in text
