"""Numbers that don't mislead: gates given as fractions, the largest k the memory allows, timings of
every stage, one exit code per kind of mistake, the nearest command, a step no tracker stores."""

from __future__ import annotations

import json
import logging
import time

import pytest

from nnk_cli import invoke
from nnk_data import make_store

N_CLASSES = 4  # make_store's default


# -- a gate given as a fraction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "meant"),
    [("--min-top1", "0.8", "80"), ("--min-top5", "1", "100"), ("--min-top1", "0.005", "0.5")],
)
def test_a_gate_in_0_1_warns_that_gates_are_percentages(runner, store, option, value, meant):
    res = invoke(runner, "classify", store, "--k", "5", "--method", "knn", option, value)
    assert res.exit_code == 0, res.stderr  # the run goes on, and the gate passes as given
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {option} {value} is a percentage (0-100), not a fraction: did you mean {meant}?"]


@pytest.mark.parametrize("value", ["0", "1.5", "80"])
def test_a_gate_above_1_or_0_does_not_warn(runner, store, value):
    res = invoke(runner, "sweep", store, "--k", "5,10", "--method", "knn", "--min-top1", value)
    assert res.exit_code in (0, 3), res.stderr
    assert "not a fraction" not in res.stderr


def test_evaluate_warns_once_for_a_fraction_gate(runner, store, tmp_path):
    res = invoke(runner, "evaluate", store, "--history", tmp_path / "h.jsonl", "--k", "5", "--min-top1", "0.8")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("--min-top1 0.8 is a percentage (0-100), not a fraction: did you mean 80?") == 1


def test_python_callers_get_the_warning_too(caplog):
    from nnkcli.numerics.metrics import check_gates, fraction_gate_warning

    assert fraction_gate_warning("--min-top1", 0.8) == (
        "--min-top1 0.8 is a percentage (0-100), not a fraction: did you mean 80?"
    )
    assert [fraction_gate_warning("--min-top1", v) for v in (None, 0, 1.01, 70)] == [None] * 4
    rows = [{"method": "knn", "k": 5, "top1": 50.0, "top5": 90.0}]
    with caplog.at_level(logging.WARNING, logger="nnkcli"):
        check_gates(rows, min_top1=0.8, min_top5=70)
    assert [r.getMessage() for r in caplog.records] == [
        "--min-top1 0.8 is a percentage (0-100), not a fraction: did you mean 80?"
    ]


# -- the largest k: the train split and the memory budget, in one hint ---------------------------


def _largest_k_in(budget: int, d: int, n_classes: int) -> int:
    """Oracle: the docstring's per-query bytes (4kd + 32k^2 + 16C + 64k) written out, searched one by one."""
    k = 1
    while 4 * (k + 1) * d + 32 * (k + 1) ** 2 + 16 * n_classes + 64 * (k + 1) <= budget:
        k += 1
    return k


@pytest.fixture(scope="module")
def big_train(tmp_path_factory):
    """20,000 train rows of dimension 4 (the memory budget binds before the train split does)."""
    return make_store(tmp_path_factory.mktemp("big") / "feats.h5", n_train=20000, n_query=20, d=4)


def test_k_beyond_the_train_split_hints_the_k_that_fits_the_memory_too(runner, big_train):
    fits = _largest_k_in(2**29 // 2, 4, N_CLASSES)  # 512 MiB shared by 2 threads (k-NN: no compiled runtime)
    assert fits < 20000
    res = invoke(runner, "classify", big_train, "--k", "30000", "--method", "knn", "--threads", "2")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: k=30000 is larger than the train split allows (20000 rows)",
        f"Hint: the largest valid k is {fits}: the train split allows 20000 and a query chunk's memory budget, "
        f"256 MiB (512 MiB, shared by 2 threads), allows {fits}; --chunk-size 1 runs a larger k with more memory",
    ]
    # the k hinted runs (and one more is refused by the memory budget, naming where it comes from)
    res = invoke(runner, "classify", big_train, "--k", str(fits), "--method", "knn", "--threads", "2")
    assert res.exit_code == 0, res.stderr
    res = invoke(runner, "classify", big_train, "--k", str(fits + 1), "--method", "knn", "--threads", "2")
    assert res.exit_code == 1
    needs = 4 * (fits + 1) * 4 + 32 * (fits + 1) ** 2 + 16 * N_CLASSES + 64 * (fits + 1)
    assert res.stderr.splitlines()[-2:] == [
        f"Error: k={fits + 1} needs {needs / 2**20:.1f} MiB for a single query (the {fits + 1}x{fits + 1} kernel "
        "block and solver work), more than the memory budget of a query chunk, 256 MiB (512 MiB, shared by 2 threads)",
        f"Hint: use --k {fits} or less, or pass --chunk-size 1 to run anyway with that much memory",
    ]


def test_with_a_chunk_size_only_the_train_split_bounds_k(runner, big_train):
    res = invoke(runner, "classify", big_train, "--k", "30000", "--method", "knn", "--chunk-size", "1")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-1] == "Hint: the largest valid k is 20000"


def test_the_budget_says_where_it_comes_from():
    from nnkcli.evaluation.memory import ChunkBudget

    budget = ChunkBudget(512 * 2**20, 104 * 2**20, 2)
    assert budget.per_chunk == 204 * 2**20
    assert (
        budget.describe()
        == "204 MiB (512 MiB, less 104 MiB for the compiled NNK engine's runtime, shared by 2 threads)"
    )
    assert ChunkBudget(512 * 2**20).describe() == "512 MiB"


# -- timings include every stage -------------------------------------------------------------------


def test_sweep_total_counts_the_selection_and_the_index(store):
    from nnkcli import sweep

    t0 = time.perf_counter()
    timing = sweep(store, k="5..20:5", select_on="train", select_queries=200).to_dict()["timing"]
    wall = time.perf_counter() - t0
    stages = timing["index_s"] + timing["evaluate_s"] + timing["selection_s"]
    assert stages <= timing["total_s"] + 1e-3 and timing["total_s"] <= wall
    assert timing["selection_s"] > 0 and timing["index_s"] > 0  # the index is built in memory here


def test_classify_total_counts_the_index(store):
    from nnkcli import classify

    t0 = time.perf_counter()
    timing = classify(store, k=5).to_dict()["timing"]
    wall = time.perf_counter() - t0
    assert timing["index_s"] + timing["evaluate_s"] <= timing["total_s"] + 1e-3 and timing["total_s"] <= wall


def test_sweep_caption_total_is_the_whole_run(runner, store):
    res = invoke(runner, "sweep", store, "--k", "5,10", "--select-on", "train", "--format", "json")
    assert res.exit_code == 0, res.stderr
    t = json.loads(res.stdout)["timing"]
    assert t["total_s"] >= t["selection_s"] + t["evaluate_s"]


# -- one exit code per kind of mistake -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["info", "{dir}"], "STORE"),
        (["index", "{dir}"], "STORE"),
        (["classify", "{dir}"], "STORE"),
        (["sweep", "{dir}"], "STORE"),
        (["extract", "{dir}", "--split", "x", "--from", "{store}"], "STORE"),
        (["merge", "{dir}"], "PARTS"),
        (["compare", "{dir}"], "A"),
        (["compare", "{store}", "{dir}"], "B"),
        (["history", "{dir}"], "HISTORY"),
        (["evaluate", "{store}", "--history", "{dir}"], "--history"),
        (["classify", "{store}", "--k", "5", "--out", "{dir}"], "--out"),
        (["sweep", "{store}", "--index", "{dir}"], "--index"),
    ],
)
def test_a_directory_where_a_file_is_meant_is_exit_1(runner, store, tmp_path, args, name):
    folder = tmp_path / "adir"
    folder.mkdir()
    res = invoke(runner, *[a.format(dir=folder, store=store) for a in args])
    assert res.exit_code == 1
    assert res.stderr == f"Error: {name} is a directory, not a file: {folder}\n"


def test_a_missing_store_is_exit_1_too(runner, tmp_path):
    res = invoke(runner, "sweep", tmp_path / "missing.h5")
    assert res.exit_code == 1 and res.stderr.startswith(f"Error: store not found: {tmp_path / 'missing.h5'}\n")


def test_a_file_where_a_directory_is_meant_is_exit_1(runner, store, tmp_path):
    res = invoke(runner, "evaluate", "--watch-dir", store, "--history", tmp_path / "h.jsonl")
    assert res.exit_code == 1
    assert res.stderr == f"Error: --watch-dir is a file, not a directory: {store}\n"


@pytest.mark.parametrize(("typed", "meant"), [("clasify", "classify"), ("swep", "sweep"), ("histroy", "history")])
def test_an_unknown_command_suggests_the_nearest(runner, typed, meant):
    res = invoke(runner, typed)
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == f"Error: No such command '{typed}'. Did you mean '{meant}'?"


def test_an_unknown_command_far_from_every_one_suggests_nothing(runner):
    res = invoke(runner, "frobnicate")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == "Error: No such command 'frobnicate'."


# -- a step no tracker stores ----------------------------------------------------------------------


def test_a_huge_step_is_a_usage_error_naming_step(runner, store, tmp_path):
    res = invoke(runner, "sweep", store, "--tensorboard", tmp_path / "tb", "--step", str(10**20))
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--step': {10**20} is not in the range 0<=x<=9223372036854775807."
    )
    assert not (tmp_path / "tb").exists()


def test_a_huge_number_in_a_name_is_not_a_step():
    from nnkcli.tracking.sources import MAX_STEP, read_step, step_from_name

    assert step_from_name(f"step_{MAX_STEP}.h5") == (MAX_STEP, "step")
    assert step_from_name(f"step_{MAX_STEP + 1}.h5") is None
    assert step_from_name(f"{10**20}.h5") is None
    assert read_step(__import__("pathlib").Path(f"epoch_{10**20}.h5"), checkpoint=False) == (None, None)


def test_write_sweep_refuses_a_step_beyond_int64(tmp_path):
    from nnkcli.tensorboard_log import write_sweep

    with pytest.raises(ValueError, match=r"^step must be an integer in \[0, 9223372036854775807\]"):
        write_sweep({"results": []}, tmp_path / "tb", 2**63)
    assert not (tmp_path / "tb").exists()


def test_history_tensorboard_writes_a_huge_step_at_its_position(runner, store, tmp_path):
    pytest.importorskip("tensorboardX")
    history = tmp_path / "h.jsonl"
    assert invoke(runner, "evaluate", store, "--history", history, "--k", "5").exit_code == 0
    entry = json.loads(history.read_text().splitlines()[-1])
    entry.update(step=10**20, sha256="0" * 64, source="other.h5")
    with history.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    res = invoke(runner, "history", history, "--tensorboard", tmp_path / "tb")
    assert res.exit_code == 0, res.stderr
    assert "2 history entries have no step" in res.stderr
