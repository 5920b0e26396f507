"""``nnk evaluate``: idempotent runs, gates and exit codes, overlapping processes, kills.

The first group runs in-process with a fake sweep (the accuracy comes from the
source file) to pin down the exit codes and messages quickly; the second runs
real ``python -m nnkcli evaluate`` processes on small real stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnkcli.cli import cli
from nnkcli.evaluation.sweeps import SweepResult
from nnkcli.tracking.history import read_history


# -- in-process, with a fake sweep ------------------------------------------------------
@pytest.fixture
def fake_sweep(monkeypatch):
    calls = []

    def sweep(store_path, options, **kwargs):
        calls.append(Path(store_path).name)
        spec = json.loads(Path(store_path).read_text())
        ks, methods = options.k_values, options.methods
        results = [{"method": m, "k": k, "top1": spec[m], "top5": 95.0} for m in methods for k in ks]
        best = {m: {"k": ks[0], "top1": spec[m], "top5": 95.0} for m in methods}
        return SweepResult({"results": results, "best": best})

    # `nnk evaluate` hands nnkcli.evaluation.sweeps.sweep to the runner: stand in for it there
    monkeypatch.setattr("nnkcli.evaluation.sweeps.sweep", sweep)
    return calls


def fake_store(path: Path, nnk: float, knn: float) -> Path:
    path.write_text(json.dumps({"nnk": nnk, "knn": knn}))
    return path


def short_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    fake_store(d / "epoch_1.h5", 70.0, 68.0)
    fake_store(d / "epoch_2.h5", 74.0, 69.0)
    return d


def evaluate(runner, *args):
    return runner.invoke(cli, ["evaluate", *map(str, args)])


def test_rerun_is_idempotent_and_says_skipped(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    res = evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--k", "10", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    a, b = run_dir / "epoch_1.h5", run_dir / "epoch_2.h5"
    header = (
        "source,step,status,sha256,nnk_top1,nnk_top1_ci_low,nnk_top1_ci_high,nnk_k,knn_top1,knn_top1_ci_low,"
        "knn_top1_ci_high,knn_k,seconds"
    )
    lines = res.stdout.splitlines()
    assert lines[0] == header
    assert [line.rsplit(",", 1)[0] for line in lines[1:]] == [
        f"epoch_1.h5,1,evaluated,{short_sha(a)},70.0,,,10,68.0,,,10",
        f"epoch_2.h5,2,evaluated,{short_sha(b)},74.0,,,10,69.0,,,10",
    ]
    before = hist.read_bytes()
    res = evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--k", "10", "--format", "csv")
    assert res.exit_code == 0
    assert res.stdout.splitlines() == [
        header,
        f"epoch_1.h5,1,skipped: already in history,{short_sha(a)},70.0,,,10,68.0,,,10,",
        f"epoch_2.h5,2,skipped: already in history,{short_sha(b)},74.0,,,10,69.0,,,10,",
    ]
    assert hist.read_bytes() == before and fake_sweep == ["epoch_1.h5", "epoch_2.h5"]


def test_table_output_and_json(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    res = evaluate(runner, run_dir / "epoch_1.h5", "--history", hist, "--k", "10")
    assert res.exit_code == 0
    row = next(line for line in res.stdout.splitlines() if "epoch_1.h5" in line)
    assert row.split()[:7] == [
        "epoch_1.h5",
        "1",
        "evaluated",
        short_sha(run_dir / "epoch_1.h5"),
        "70.00",
        "10",
        "68.00",
    ]
    assert "1 evaluated, 0 skipped, 0 failed" in res.stdout
    res = evaluate(runner, run_dir / "epoch_1.h5", "--history", hist, "--k", "10", "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 1 and doc["counts"] == {"evaluated": 0, "skipped": 1, "failed": 0}
    assert doc["sources"][0]["reason"] == "already in history" and doc["gate"] is None


def test_regression_gate_exit_codes(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    assert evaluate(runner, "--watch-dir", run_dir, "--history", hist).exit_code == 0
    e3 = fake_store(run_dir / "epoch_3.h5", 72.5, 70.0)  # 1.5 points below the best (epoch 2)
    ok = evaluate(runner, e3, "--history", hist, "--fail-on-regression", "1.5")
    assert ok.exit_code == 0, ok.stderr
    res = evaluate(runner, e3, "--history", hist, "--fail-on-regression", "1.4")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[-2:] == [
        "Error: regression: nnk top-1 of epoch_3.h5 (step 3) is 72.50, 1.50 points below the "
        "best 74.00 of epoch_2.h5 (step 2) (allowed: 1.4)",
        f"Hint: see the whole history with: nnk history {hist}",
    ]
    # kNN improved at epoch 3: its gate passes
    res = evaluate(runner, e3, "--history", hist, "--fail-on-regression", "0", "--gate-method", "knn")
    assert res.exit_code == 0
    # every source of the run is gated: with the whole folder, epoch 1 (4 points below epoch 2) fails too
    res = evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--fail-on-regression", "1.4", "-q")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[0].startswith(
        "Error: regression: nnk top-1 of epoch_1.h5 (step 1) is 70.00, 4.00 points below the best 74.00 of "
        "epoch_2.h5 (step 2) (allowed: 1.4); regression: nnk top-1 of epoch_3.h5 (step 3) is 72.50"
    )


def test_gate_checks_the_evaluated_source_not_the_newest_entry(runner, tmp_path, fake_sweep):
    """A bad checkpoint evaluated after a newer good one still fails (the gate used to fail open)."""
    d = tmp_path / "run"
    d.mkdir()
    good = fake_store(d / "c9.h5", 84.0, 80.0)
    bad = fake_store(d / "c4.h5", 54.0, 50.0)
    hist = tmp_path / "h.jsonl"
    assert evaluate(runner, good, "--history", hist).exit_code == 0
    os.utime(good, (2_000_000_000, 2_000_000_000))  # the good one is newer on disk
    os.utime(bad, (1_000_000_000, 1_000_000_000))
    res = evaluate(runner, bad, "--history", hist, "--fail-on-regression", "1", "-q")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[0] == (
        "Error: regression: nnk top-1 of c4.h5 is 54.00, 30.00 points below the best 84.00 of c9.h5 (allowed: 1)"
    )
    # and again when nothing is new: the source is named, already recorded with these parameters
    res = evaluate(runner, bad, "--history", hist, "--fail-on-regression", "1", "--format", "json")
    assert res.exit_code == 3
    gate = json.loads(res.stdout)["gate"]
    assert [(s["source"], s["drop"]) for s in gate["sources"]] == [("c4.h5", 30.0)]
    assert evaluate(runner, good, "--history", hist, "--fail-on-regression", "1").exit_code == 0


def test_min_top1_gate(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    res = evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--min-top1", "74.5", "-q")
    assert res.exit_code == 3
    assert res.stderr.splitlines()[0] == (
        "Error: nnk top-1 of epoch_1.h5 (step 1) is 70.00, below --min-top1 74.5; "
        "nnk top-1 of epoch_2.h5 (step 2) is 74.00, below --min-top1 74.5"
    )
    assert len(read_history(hist).entries) == 2  # recorded before the gate failed
    res = evaluate(runner, run_dir / "epoch_2.h5", "--history", hist, "--min-top1", "74", "--method", "knn")
    assert res.exit_code == 3  # knn only: the gate follows the evaluated method (69.0 < 74)


def test_gate_on_empty_history_passes_with_a_warning(runner, tmp_path, fake_sweep):
    d = tmp_path / "empty"
    d.mkdir()
    res = evaluate(runner, "--watch-dir", d, "--history", tmp_path / "h.jsonl", "--fail-on-regression", "1")
    assert res.exit_code == 0
    assert res.stderr.splitlines() == [
        f"no file in {d} matches *.h5",
        "warning: no source of this run has a nnk result in h.jsonl: nothing to gate",
    ]


def test_other_parameters_evaluate_again_and_force_records_a_new_line(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    e1 = run_dir / "epoch_1.h5"
    assert evaluate(runner, e1, "--history", hist, "--k", "10..50:10").exit_code == 0
    res = evaluate(runner, e1, "--history", hist, "--k", "5..50:5", "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"evaluated": 1, "skipped": 0, "failed": 0}  # not "skipped" with the old numbers
    assert doc["sources"][0]["best"]["nnk"]["k"] == 5
    for args in (("--temperature", "0.1"), ("--method", "nnk"), ("--kernel", "gaussian")):
        assert (
            json.loads(evaluate(runner, e1, "--history", hist, "--k", "5..50:5", *args, "--format", "json").stdout)[
                "counts"
            ]["evaluated"]
            == 1
        )
    same = json.loads(
        evaluate(runner, e1, "--history", hist, "--k", "5..50:5", "--threads", "1", "--format", "json").stdout
    )
    assert same["counts"]["skipped"] == 1  # threads do not change results: same parameter set
    entries = read_history(hist).entries
    assert len(entries) == 5 and len({e["params_key"] for e in entries}) == 5
    forced = json.loads(evaluate(runner, e1, "--history", hist, "--k", "5..50:5", "--force", "--format", "json").stdout)
    assert forced["counts"]["evaluated"] == 1
    history = read_history(hist)
    assert len(history.entries) == 6 and not history.malformed
    assert history.entries[-1]["forced"] is True
    assert fake_sweep.count("epoch_1.h5") == 6


def test_failed_source_exit_1_others_recorded(runner, run_dir, fake_sweep):
    (run_dir / "broken.h5").write_text("{")
    hist = run_dir.parent / "h.jsonl"
    res = evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--fail-on-regression", "100")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-2:] == [
        "Error: 1 of 3 sources failed; broken.h5: JSONDecodeError: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)",
        "Hint: failed sources are not recorded; the next run retries them",
    ]
    assert len(read_history(hist).entries) == 2


def test_malformed_history_line_is_reported_not_fatal(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    hist.write_text('{"schema_version": 1, "sha256": "1234')  # a torn line from a crash
    res = evaluate(runner, run_dir / "epoch_1.h5", "--history", hist, "--format", "csv")
    assert res.exit_code == 0, res.stderr
    assert (
        "warning: h.jsonl: 1 malformed line skipped (first: line 1: not valid JSON: Unterminated string "
        f"starting at (column 33)); 'nnk history {hist} --format json' lists them"
    ) in res.stderr.splitlines()
    assert len(read_history(hist).entries) == 1 and hist.read_text().count("\n") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Error: give at least one SOURCE or --watch-dir DIR"),
        (
            ["x.h5", "--k", "10..abc"],
            (
                "Error: Invalid value for '--k': bad k token '10..abc' (got '10..abc'); use N, A..B "
                "(multiples of A up to B), A..B:S (step S), or comma lists such as 1,5,10..200:10"
            ),
        ),
        (
            ["x.h5", "--model", "m:f"],
            "Error: checkpoint SOURCEs need --model, --train-images and --val-images "
            "(missing: --train-images, --val-images)",
        ),
        (
            ["x.h5", "--method", "knn", "--gate-method", "nnk"],
            "Error: --gate-method nnk is not among the methods run (--method knn)",
        ),
        (
            ["x.h5", "--fail-on-regression", "-1"],
            "Error: Invalid value for '--fail-on-regression': must be a finite number of points >= 0 (got -1.0)",
        ),
    ],
)
def test_usage_errors_exit_2(runner, tmp_path, args, message, fake_sweep):
    res = runner.invoke(cli, ["evaluate", *args, "--history", str(tmp_path / "h.jsonl")])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == message


def test_missing_source_exit_1(runner, tmp_path, fake_sweep):
    res = evaluate(runner, tmp_path / "nope.h5", "--history", tmp_path / "h.jsonl")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"Error: source not found: {tmp_path / 'nope.h5'}"]


# -- real processes on real stores --------------------------------------------------------
# Runs `nnk evaluate` in a subprocess; NNK_TEST_DELAY stretches each evaluation so that
# two processes overlap, NNK_TEST_HANG names a source after whose sweep the process
# signals NNK_TEST_FLAG and hangs (to be killed mid-run).
DRIVER = """
import os, sys, time, types
import nnkcli.evaluation.sweeps as sweeps

real_sweep = sweeps.sweep

def sweep(store_path, *args, **kwargs):
    result = real_sweep(store_path, *args, **kwargs)
    time.sleep(float(os.environ.get("NNK_TEST_DELAY", "0")))
    if os.path.basename(str(store_path)) == os.environ.get("NNK_TEST_HANG"):
        open(os.environ["NNK_TEST_FLAG"], "w").close()
        time.sleep(120)
    return result

sweeps.sweep = sweep  # `nnk evaluate` passes this function to the runner
from nnkcli.cli import main
main(sys.argv[1:])
"""

K = "5..20:5"


def make_store(path: Path, seed: int) -> Path:
    from nnkcli.storage.store import write_split

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(5, 16)) * 1.5
    for split, n in (("train", 300), ("val", 100)):
        labels = rng.integers(0, 5, n)
        write_split(path, split, (means[labels] + rng.normal(size=(n, 16))).astype(np.float32), labels, source="test")
    return path


@pytest.fixture
def stores(tmp_path):
    d = tmp_path / "stores"
    d.mkdir()
    return [make_store(d / f"epoch_{i}.h5", seed=i) for i in range(1, 5)]


def start(tmp_path, args, **env):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(driver), "evaluate", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **{k: str(v) for k, v in env.items()}},
    )


def test_two_overlapping_processes_record_each_source_once(tmp_path, stores):
    hist = tmp_path / "history.jsonl"
    s1, s2, s3, s4 = stores
    common = ["--history", hist, "--k", K, "--format", "json", "--threads", "1"]
    a = start(tmp_path, [s1, s2, s3, *common], NNK_TEST_DELAY=0.3)
    b = start(tmp_path, [s2, s3, s4, *common], NNK_TEST_DELAY=0.3)
    docs = []
    for p in (a, b):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    history = read_history(hist)
    assert history.malformed == []
    shas = sorted(e["sha256"] for e in history.entries)
    assert shas == sorted(hashlib.sha256(s.read_bytes()).hexdigest() for s in stores)
    evaluated = [o["source"] for d in docs for o in d["sources"] if o["status"] == "evaluated"]
    skipped = [o for d in docs for o in d["sources"] if o["status"] == "skipped"]
    assert sorted(evaluated) == sorted(map(str, stores))  # each evaluated by exactly one process
    assert len(skipped) == 2
    assert all(o["best"]["nnk"]["top1"] > 20 for d in docs for o in d["sources"])
    assert not list(tmp_path.glob(".history.jsonl.*.claim"))


def test_killed_evaluation_leaves_a_valid_history_and_rerun_completes(tmp_path, stores, runner):
    hist = tmp_path / "history.jsonl"
    flag = tmp_path / "flag"
    s1, s2, s3 = stores[:3]
    p = start(
        tmp_path, [s1, s2, s3, "--history", hist, "--k", K, "--threads", "1"], NNK_TEST_HANG=s2.name, NNK_TEST_FLAG=flag
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline, "the evaluation never reached the second source"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    raw = hist.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1  # only s1, whole
    history = read_history(hist)
    assert history.malformed == [] and [Path(e["source"]).name for e in history.entries] == [s1.name]

    res = runner.invoke(
        cli, ["evaluate", str(s1), str(s2), str(s3), "--history", str(hist), "--k", K, "--format", "json"]
    )
    assert res.exit_code == 0, res.stderr
    assert [o["status"] for o in json.loads(res.stdout)["sources"]] == ["skipped", "evaluated", "evaluated"]
    assert len(read_history(hist).entries) == 3


def test_recorded_accuracy_matches_an_independent_knn(tmp_path, stores, runner):
    """The recorded kNN top-1 equals a brute-force numpy weighted kNN (DINO's exp(cos / T) votes)."""
    from nnkcli.evaluation.sweeps import sweep
    from nnkcli.storage.store import FeatureStore

    hist = tmp_path / "history.jsonl"
    res = runner.invoke(
        cli,
        ["evaluate", str(stores[0]), "--history", str(hist), "--k", "5,10", "--temperature", "0.1", "--format", "json"],
    )
    assert res.exit_code == 0, res.stderr
    [entry] = read_history(hist).entries
    with FeatureStore(stores[0]) as store:
        xb, yb = store.split("train").read(), np.asarray(store.split("train").labels)
        xq, yq = store.split("val").read(), np.asarray(store.split("val").labels)
    xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    sims = xq @ xb.T
    order = np.argsort(-sims, axis=1)
    recorded = {(r["method"], r["k"]): r["top1"] for r in entry["results"]}
    for k in (5, 10):
        idx = order[:, :k]
        votes = np.zeros((len(xq), 5))
        np.add.at(votes, (np.arange(len(xq))[:, None], yb[idx]), np.exp(np.take_along_axis(sims, idx, 1) / 0.1))
        assert recorded[("knn", k)] == pytest.approx(100.0 * np.mean(votes.argmax(1) == yq))
    direct = sweep(stores[0], k_values=[5, 10], temperature=0.1).to_dict()
    assert [(r["method"], r["k"], r["top1"]) for r in direct["results"]] == [
        (r["method"], r["k"], r["top1"]) for r in entry["results"]
    ]
    assert entry["best"] == direct["best"]


# -- checkpoints: a tiny MODULE:CALLABLE model and image folders made here -----------------
TINY_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.conv(x))), 1)


def make():
    torch.manual_seed(0)
    return Net()
"""


@pytest.fixture
def checkpoint_run(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    PIL_Image = pytest.importorskip("PIL.Image")
    (tmp_path / "nnk_evaltiny.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    colours = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}
    for folder, n in (("train", 6), ("val", 3)):
        for name, colour in colours.items():
            (tmp_path / folder / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
                PIL_Image.fromarray(pixels).save(tmp_path / folder / name / f"{i}.png")
    import nnk_evaltiny

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for seed, epoch in ((1, 10), (2, 20)):
        torch.manual_seed(seed)
        state = {f"module.{k}": v for k, v in nnk_evaltiny.Net().state_dict().items()}
        torch.save({"epoch": epoch, "state_dict": state, "optimizer": {}}, ckpts / f"checkpoint{seed:04d}.pth")
    return tmp_path


def ckpt_args(run: Path, *extra):
    return [
        "evaluate",
        "--watch-dir",
        str(run / "ckpts"),
        "--model",
        "nnk_evaltiny:make",
        "--train-images",
        str(run / "train"),
        "--val-images",
        str(run / "val"),
        "--resize",
        "24",
        "--crop",
        "24",
        "--history",
        str(run / "history.jsonl"),
        "--k",
        "1..5:2",
        *extra,
    ]


def test_checkpoints_are_extracted_beside_the_history_then_evaluated(runner, checkpoint_run):
    import nnk_evaltiny
    import torch

    from nnkcli.extract.images import EvalTransform, scan_image_folder
    from nnkcli.storage.store import FeatureStore

    run = checkpoint_run
    res = runner.invoke(cli, ckpt_args(run, "--format", "json"))
    assert res.exit_code == 0, res.stderr
    assert [o["status"] for o in json.loads(res.stdout)["sources"]] == ["evaluated", "evaluated"]
    entries = read_history(run / "history.jsonl").entries
    assert [(e["kind"], e["step"], e["step_from"]) for e in entries] == [
        ("checkpoint", 10, "checkpoint:epoch"),
        ("checkpoint", 20, "checkpoint:epoch"),
    ]
    assert entries[0]["parameters"]["model"]["model"] == "nnk_evaltiny:make"
    assert entries[0]["parameters"]["model"]["resize"] == 24
    assert entries[0]["timing"]["extract_s"] > 0
    store_path = Path(entries[0]["store"])
    assert store_path.parent == run / "stores" and store_path.name.startswith(entries[0]["sha256"][:16])

    # the stored val features are the checkpoint's weights applied to the images
    model = nnk_evaltiny.make()
    state = torch.load(run / "ckpts" / "checkpoint0001.pth")["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    samples = scan_image_folder(run / "val")
    transform = EvalTransform(resize=24, crop=24)
    from PIL import Image

    batch = torch.from_numpy(np.stack([transform(Image.open(p)) for p in samples.paths]))
    with torch.no_grad():
        expected = model(batch).numpy()
    with FeatureStore(store_path) as store:
        assert sorted(store.splits) == ["train", "val"]
        np.testing.assert_allclose(store.split("val").read(), expected, rtol=1e-5, atol=1e-5)

    # idempotent: nothing re-extracted, nothing re-evaluated
    mtime = store_path.stat().st_mtime_ns
    res = runner.invoke(cli, ckpt_args(run, "--format", "csv"))
    assert res.exit_code == 0
    assert [line.split(",")[2] for line in res.stdout.splitlines()[1:]] == ["skipped: already in history"] * 2
    assert store_path.stat().st_mtime_ns == mtime


def test_checkpoint_store_can_be_discarded(runner, checkpoint_run):
    res = runner.invoke(cli, ckpt_args(checkpoint_run, "--no-keep-store", "--method", "knn"))
    assert res.exit_code == 0, res.stderr
    assert list((checkpoint_run / "stores").glob("*.h5")) == []
    assert len(read_history(checkpoint_run / "history.jsonl").entries) == 2


def test_checkpoint_missing_a_parameter_fails_and_is_not_recorded(runner, checkpoint_run):
    import torch

    bad = checkpoint_run / "ckpts" / "checkpoint0003.pth"
    torch.save({"epoch": 30, "state_dict": {"conv.weight": torch.zeros(8, 3, 3, 3)}}, bad)
    res = runner.invoke(cli, ckpt_args(checkpoint_run))
    assert res.exit_code == 1
    error = res.stderr.splitlines()[-2]
    assert error.startswith("Error: 1 of 3 sources failed; checkpoint0003.pth: ") and "conv.bias" in error
    assert len(read_history(checkpoint_run / "history.jsonl").entries) == 2


def test_checkpoints_without_torch(runner, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "c.pth").write_bytes(b"x")
    (tmp_path / "imgs").mkdir()
    res = runner.invoke(
        cli,
        [
            "evaluate",
            str(tmp_path / "c.pth"),
            "--model",
            "m:f",
            "--train-images",
            str(tmp_path / "imgs"),
            "--val-images",
            str(tmp_path / "imgs"),
            "--history",
            str(tmp_path / "h.jsonl"),
        ],
    )
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        "Error: evaluating checkpoints needs the optional 'torch' extra, which is not installed",
        'Hint: pip install "nnkcli[torch]"',
    ]


def test_history_shows_one_parameter_set_at_a_time(runner, run_dir, fake_sweep):
    from nnkcli.tracking.paramsets import entry_key

    hist = run_dir.parent / "h.jsonl"
    assert evaluate(runner, "--watch-dir", run_dir, "--history", hist, "--k", "10").exit_code == 0
    assert evaluate(runner, run_dir / "epoch_2.h5", "--history", hist, "--k", "20").exit_code == 0
    keys = [entry_key(e) for e in read_history(hist).entries]
    old, new = keys[0], keys[2]
    res = runner.invoke(cli, ["history", str(hist)])
    assert res.exit_code == 0, res.stderr
    lines = [line.strip() for line in res.stdout.splitlines()]
    assert sum("epoch_" in line for line in lines) == 1  # the most recent set: only epoch 2 at k=20
    assert (
        f"1 source with parameter set 1 ({new}: k 20, methods nnk,knn, kernel cosine, T 0.07, weighting exp, "
        f"train train, query val); 2 entries with 1 other parameter set: see --params, pick with --param-set" in lines
    )
    doc = json.loads(runner.invoke(cli, ["history", str(hist), "--params", "--format", "json"]).stdout)
    assert [(s["number"], s["key"], s["entries"]) for s in doc["parameter_sets"]] == [(1, new, 1), (2, old, 2)]
    for choice in ("2", old[:6]):
        doc = json.loads(runner.invoke(cli, ["history", str(hist), "--param-set", choice, "--format", "json"]).stdout)
        assert [r["source"] for r in doc["rows"]] == ["epoch_1.h5", "epoch_2.h5"]
        assert doc["parameter_set"]["key"] == old and doc["other_parameter_sets"] == [
            {"number": 1, "key": new, "entries": 1}
        ]
    # a number beyond the sets that no key starts with (keys are hashes of every parameter)
    none = next(d for d in "9876543" if not new.startswith(d) and not old.startswith(d))
    res = runner.invoke(cli, ["history", str(hist), "--param-set", none])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: --param-set '{none}' matches none of the parameter sets: 1 ({new}), 2 ({old})",
        f"Hint: list them with: nnk history {hist} --params",
    ]


def test_forced_reevaluation_wins_in_the_history_view(runner, run_dir, fake_sweep):
    hist = run_dir.parent / "h.jsonl"
    e1 = run_dir / "epoch_1.h5"
    assert evaluate(runner, e1, "--history", hist, "--k", "10").exit_code == 0
    fake_store(run_dir / "epoch_1.h5", 71.0, 68.0)  # rewritten in place: a new sha256, a new source
    assert evaluate(runner, e1, "--history", hist, "--k", "10").exit_code == 0
    assert evaluate(runner, e1, "--history", hist, "--k", "10", "--force").exit_code == 0
    doc = json.loads(runner.invoke(cli, ["history", str(hist), "--format", "json"]).stdout)
    assert len(read_history(hist).entries) == 3
    assert [r["nnk_top1"] for r in doc["rows"]] == [70.0, 71.0]  # one row per sha256, the newest line


def test_a_feature_store_given_as_the_history_is_refused_before_anything_is_written(runner, tmp_path, store):
    """A typo in a cron line (``--history feats.h5``) must not append to, or create anything beside, a store."""
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    listing = sorted(p.name for p in tmp_path.iterdir())
    res = evaluate(runner, store, "--history", store, "--k", "5")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: {store} is not an nnkcli history (it is an HDF5 file: a feature store?): its first line is not "
        "a history record; it was left as it is",
        "Hint: --history takes the .jsonl file that nnk evaluate writes, or a new file name",
    ]
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no .lock, no .d/ of sidecars
