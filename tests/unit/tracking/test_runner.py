"""nnkcli.tracking.runner (with sources, claims, checkpoints): once-only evaluation into the history.

The evaluation itself is replaced by a fake sweep that reads the accuracy to
report from the "store" file, so these tests check the bookkeeping only; the
end-to-end tests with real stores and the real sweep are in tests/cli/.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from pathlib import Path

import pytest

from nnkcli.errors import InputError, OptionError
from nnkcli.evaluation.options import DataOptions, ScoringOptions
from nnkcli.evaluation.sweeps import SweepResult
from nnkcli.tracking.checkpoints import ModelOptions, checkpoint_store_path
from nnkcli.tracking.claims import claim, claim_path
from nnkcli.tracking.history import HistoryError, append_entry, read_history
from nnkcli.tracking.runner import (
    RunStatus,
    SourceOutcome,
    evaluate_sources,
    status_counts,
)
from nnkcli.tracking.sources import collect_sources


class FakeSweep:
    """Stands in for ``nnkcli.evaluation.sweeps.sweep``: top-1 per method comes from the source file's JSON."""

    def __init__(self):
        self.calls = []
        self.hook = None  # called with the store path before answering

    def sweep(self, store_path, options, *, data, gate_requested, progress_factory=None):
        self.calls.append(
            (
                str(store_path),
                list(options.k_values),
                options.methods,
                {"options": options, "data": data, "gate_requested": gate_requested},
            )
        )
        if self.hook is not None:
            self.hook(store_path)
        spec = json.loads(open(store_path).read())
        if "fail" in spec:
            raise InputError(spec["fail"])
        results = [
            {"method": m, "k": k, "top1": spec[m] - abs(k - 20) / 10, "top5": 90.0, "n_queries": 10}
            for m in options.methods
            for k in options.k_values
        ]
        best = {m: max((r for r in results if r["method"] == m), key=lambda r: r["top1"]) for m in options.methods}
        best = {m: {"k": r["k"], "top1": r["top1"], "top5": r["top5"]} for m, r in best.items()}
        return SweepResult({"results": results, "best": best, "parameters": options.as_dict()})

    def run(self, sources, history_path, **kwargs):
        """``evaluate_sources`` with this fake as its sweep function."""
        return evaluate_sources(sources, history_path, sweep=self.sweep, **kwargs)


@pytest.fixture
def fake():
    return FakeSweep()


def make_source(path, nnk=70.0, knn=65.0, **extra):
    path.write_text(json.dumps({"nnk": nnk, "knn": knn, **extra}))
    return path


def sha_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


OPTS = ScoringOptions(k_values="10..30")


def key_of(source, options=OPTS):
    """The parameter-set key the runner gives ``source`` evaluated with ``options``."""
    from nnkcli.tracking.paramsets import parameter_key
    from nnkcli.tracking.runner import source_parameters

    return parameter_key(source_parameters(options, DataOptions(), None, source))


def test_the_search_kernel_is_not_part_of_the_parameter_set(tmp_path):
    """Every kernel gives bit-identical results, so a history written before --search-kernel existed keeps its
    series (the option's arrival changed every parameter key, and the nightly tutorial's history split in two)."""
    from nnkcli.tracking.paramsets import parameter_key

    a = make_source(tmp_path / "epoch_1.h5")
    assert (
        key_of(a, OPTS.replace(search_kernel="fp32"))
        == key_of(a, OPTS)
        == key_of(a, OPTS.replace(search_kernel="bf16"))
    )
    recorded = {**OPTS.as_dict(), **DataOptions().as_dict()}
    older = {name: value for name, value in recorded.items() if name != "search_kernel"}
    assert parameter_key(older) == parameter_key(recorded)


def test_evaluates_each_source_once_and_records_one_line(tmp_path, fake):
    a = make_source(tmp_path / "epoch_1.h5", nnk=70.0)
    b = make_source(tmp_path / "epoch_2.h5", nnk=72.0)
    hist = tmp_path / "h.jsonl"
    outcomes = fake.run([a, b], hist, options=OPTS)
    assert [o.status for o in outcomes] == ["evaluated", "evaluated"]
    assert len(fake.calls) == 2 and fake.calls[0][1] == [10, 20, 30]
    entries = read_history(hist).entries
    assert [e["sha256"] for e in entries] == [sha_of(a), sha_of(b)]
    e = entries[0]
    assert e["schema_version"] == 1 and e["kind"] == "store"
    assert e["source"] == str(a.resolve()) and e["size"] == a.stat().st_size
    assert e["step"] == 1 and e["step_from"] == "name:epoch"
    assert e["k_spec"] == "10..30" and e["k_values"] == [10, 20, 30]
    assert e["best"]["nnk"] == {"k": 20, "top1": 70.0, "top5": 90.0}
    assert len(e["results"]) == 6
    assert e["parameters"]["temperature"] == 0.07 and e["parameters"]["methods"] == ["nnk", "knn"]
    assert e["parameters"] == {**OPTS.as_dict(), **DataOptions().as_dict()}  # both objects, whole
    for key in ("nnkcli_version", "host", "started_at", "finished_at", "mtime"):
        assert e[key]
    assert e["started_at"] <= e["finished_at"]

    before = hist.read_bytes()
    again = fake.run([a, b], hist, options=OPTS)
    assert [(o.status, o.reason) for o in again] == [("skipped", "already in history")] * 2
    assert again[1].entry["best"]["nnk"]["top1"] == 72.0
    assert len(fake.calls) == 2 and hist.read_bytes() == before
    assert not list(tmp_path.glob(".*.claim*"))  # every claim is gone once its source is done


def test_same_content_under_another_name_is_skipped(tmp_path, fake):
    a = make_source(tmp_path / "a.h5")
    copy = tmp_path / "copy.h5"
    copy.write_bytes(a.read_bytes())
    outcomes = fake.run([a, copy], tmp_path / "h.jsonl", options=OPTS)
    assert [o.status for o in outcomes] == ["evaluated", "skipped"]
    assert len(read_history(tmp_path / "h.jsonl").entries) == 1


def test_a_failing_source_is_not_recorded_and_retried_next_run(tmp_path, fake):
    bad = make_source(tmp_path / "bad.h5", fail="query split 'val' not found")
    good = make_source(tmp_path / "good.h5")
    hist = tmp_path / "h.jsonl"
    outcomes = fake.run([bad, good], hist, options=OPTS)
    assert [(o.status, o.reason) for o in outcomes] == [("failed", "query split 'val' not found"), ("evaluated", None)]
    assert [e["sha256"] for e in read_history(hist).entries] == [sha_of(good)]
    make_source(bad, nnk=71.0)  # fixed in place: new content, new sha256
    assert [o.status for o in fake.run([bad, good], hist, options=OPTS)] == ["evaluated", "skipped"]


def test_unexpected_exception_in_one_source_does_not_stop_the_run(tmp_path, fake):
    a, b = make_source(tmp_path / "a.h5"), make_source(tmp_path / "b.h5", nnk=1.0)

    def hook(path):
        if path == a:
            raise ZeroDivisionError("boom")

    fake.hook = hook
    outcomes = fake.run([a, b], tmp_path / "h.jsonl", options=OPTS)
    assert [(o.status, o.reason) for o in outcomes] == [("failed", "ZeroDivisionError: boom"), ("evaluated", None)]


def test_a_source_rewritten_during_its_evaluation_is_not_recorded(tmp_path, fake):
    a = make_source(tmp_path / "last.h5", nnk=70.0)
    fake.hook = lambda p: make_source(a, nnk=171.25)  # the trainer overwrites the file meanwhile
    hist = tmp_path / "h.jsonl"
    [outcome] = fake.run([a], hist, options=OPTS)
    assert (outcome.status, outcome.reason) == (
        "failed",
        "changed while being evaluated (still being written?); not recorded",
    )
    assert read_history(hist).entries == []
    fake.hook = None
    assert [o.status for o in fake.run([a], hist, options=OPTS)] == ["evaluated"]


def test_checkpoint_without_model_options_fails_clearly(tmp_path, fake):
    ckpt = tmp_path / "checkpoint0001.pth"
    ckpt.write_bytes(b"PK\x03\x04 not a store")
    [outcome] = fake.run([ckpt], tmp_path / "h.jsonl", options=OPTS)
    assert outcome.status == "failed"
    assert outcome.reason == (
        "checkpoint0001.pth is not a feature store (.h5); a checkpoint needs --model, --train-images and --val-images"
    )


def test_source_claimed_elsewhere_is_deferred_then_skipped(tmp_path, fake):
    """Another process holds x's claim: this run evaluates y first, then finds x recorded."""
    x, y = make_source(tmp_path / "x.h5"), make_source(tmp_path / "y.h5", nnk=60.0)
    hist = tmp_path / "h.jsonl"
    holding, y_started = threading.Event(), threading.Event()

    def other_process():
        with claim(hist, sha_of(x), blocking=True):
            holding.set()
            y_started.wait(10)
            append_entry(
                hist, {"sha256": sha_of(x), "source": str(x), "best": {}, "results": [], "params_key": key_of(x)}
            )

    t = threading.Thread(target=other_process)
    t.start()
    assert holding.wait(10)
    fake.hook = lambda p: y_started.set()
    outcomes = fake.run([x, y], hist, options=OPTS)
    t.join(10)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("skipped", "evaluated by another process"),
        ("evaluated", None),
    ]
    assert [c[0] for c in fake.calls] == [str(y)]
    assert len(read_history(hist).entries) == 2


def test_recorded_meanwhile_by_a_writer_ignoring_claims_is_not_appended_twice(tmp_path, fake):
    x = make_source(tmp_path / "x.h5")
    hist = tmp_path / "h.jsonl"
    fake.hook = lambda p: append_entry(
        hist, {"sha256": sha_of(x), "source": "elsewhere", "best": {}, "results": [], "params_key": key_of(x)}
    )
    [outcome] = fake.run([x], hist, options=OPTS)
    assert (outcome.status, outcome.reason) == ("skipped", "recorded by another process meanwhile")
    assert [e["source"] for e in read_history(hist).entries] == ["elsewhere"]


def test_claim_is_exclusive_and_removed(tmp_path):
    hist = tmp_path / "h.jsonl"
    s = "ab" * 32
    with claim(hist, s, blocking=False) as first:
        assert first and claim_path(hist, s).exists()
        with claim(hist, s, blocking=False) as second:
            assert not second
    assert not claim_path(hist, s).exists()
    with claim(hist, s, blocking=False) as again:
        assert again


def test_collect_sources(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    for name in ("b.pth", "a.pth", ".a.pth.tmp-1-x", "notes.txt"):
        (d / name).write_text(name)
    (d / "sub.pth").mkdir()
    extra = tmp_path / "extra.h5"
    extra.write_text("x")
    found = collect_sources([extra, d / "a.pth"], watch_dir=d, pattern="*.pth")
    assert [p.name for p in found] == ["extra.h5", "a.pth", "b.pth"]
    with pytest.raises(InputError, match="source not found: .*missing.h5"):
        collect_sources([tmp_path / "missing.h5"])
    with pytest.raises(InputError, match="source is a directory"):
        collect_sources([d])
    with pytest.raises(InputError, match="--watch-dir is not a directory"):
        collect_sources([], watch_dir=extra)


def test_bad_arguments(tmp_path, fake):
    a = make_source(tmp_path / "a.h5")
    with pytest.raises(OptionError, match="bad k token"):
        fake.run([a], tmp_path / "h.jsonl", options=ScoringOptions(k_values="10..x"))
    with pytest.raises(InputError, match="--index names the index of one store"):
        fake.run([a, a], tmp_path / "h.jsonl", options=OPTS, data=DataOptions(index_path="i.faiss"))
    with pytest.raises(HistoryError, match="the directory of --history does not exist"):
        fake.run([a], tmp_path / "nope" / "h.jsonl", options=OPTS)
    with pytest.raises(HistoryError, match="--history is a directory"):
        fake.run([a], tmp_path, options=OPTS)
    with pytest.raises(OptionError, match="^methods: unknown method"):
        ScoringOptions(methods=("svm",))
    assert fake.calls == []


def test_options_reach_the_sweep(tmp_path, fake):
    a = make_source(tmp_path / "a.h5")
    opts = ScoringOptions(k_values="5", methods=("knn",), temperature=0.1, exclude_self=True)
    data = DataOptions(query_split="test")
    [outcome] = fake.run([a], tmp_path / "h.jsonl", options=opts, data=data)
    _, k_values, methods, kwargs = fake.calls[0]
    assert k_values == [5] and methods == ("knn",)
    assert kwargs["options"] is opts and kwargs["data"] is data  # passed whole
    assert kwargs["gate_requested"] is True
    assert outcome.entry["parameters"]["query_split"] == "test" and outcome.entry["parameters"]["temperature"] == 0.1
    assert list(outcome.entry["best"]) == ["knn"]


def test_checkpoint_store_path_is_beside_the_history(tmp_path):
    p = checkpoint_store_path(tmp_path / "h.jsonl", "0123456789abcdef" * 4)
    assert p == tmp_path / "stores" / "0123456789abcdef.h5"
    base = ModelOptions("m:f", "tr", "va")
    assert base.keep_store
    # another extraction set-up never reuses a store extracted with different options
    names = {
        checkpoint_store_path(tmp_path / "h.jsonl", "ab" * 32, m).name
        for m in (base, ModelOptions("m:f", "tr", "va", extract={"resize": 32}), ModelOptions("m:g", "tr", "va"))
    }
    assert len(names) == 3 and all(n.startswith("abababababababab-") for n in names)


# -- an interrupt in any wrapping ends the run (hardening) -----------------------------------
@pytest.mark.parametrize("wrapped", [True, False])
def test_an_interrupt_wrapped_by_a_c_extension_ends_the_run(tmp_path, fake, wrapped):
    a, b = make_source(tmp_path / "a.h5"), make_source(tmp_path / "b.h5", nnk=1.0)

    def hook(path):
        if path == a:
            if not wrapped:
                raise KeyboardInterrupt
            try:  # what h5py did once: the Ctrl-C surfaced as a SystemError from its lock
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise SystemError(
                    "<method '__exit__' of 'FastRLock' objects> returned a result with an exception set"
                ) from exc

    fake.hook = hook
    with pytest.raises(KeyboardInterrupt):
        fake.run([a, b], tmp_path / "h.jsonl", options=OPTS)
    assert [c[0] for c in fake.calls] == [str(a)]  # b was never started
    assert not (tmp_path / "h.jsonl").exists() or read_history(tmp_path / "h.jsonl").entries == []


def test_interrupt_in_finds_the_interrupt_behind_any_wrapping():
    from nnkcli.errors import Terminated, interrupt_in

    assert interrupt_in(ValueError("plain")) is None
    inner = Terminated(15, "SIGTERM")
    try:
        try:
            raise inner
        except KeyboardInterrupt:
            raise RuntimeError("wrapped")  # noqa: B904 (an implicit __context__ is what is tested)
    except RuntimeError as outer:
        assert interrupt_in(outer) is inner


# -- a failed history append leaves no torn line (hardening) ---------------------------------
def test_a_short_append_on_a_full_disk_is_undone(tmp_path, monkeypatch):
    import errno
    import os as _os

    path = tmp_path / "h.jsonl"
    append_entry(path, {"sha256": "a" * 64, "source": "one"})
    before = path.read_bytes()
    real_write = _os.write

    def half_then_full(fd, data):  # what a full disk does: part of the line, then ENOSPC
        if len(data) > 20:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_os, "write", half_then_full)
    with pytest.raises(HistoryError) as info:
        append_entry(path, {"sha256": "b" * 64, "source": "two"})
    monkeypatch.setattr(_os, "write", real_write)
    assert info.value.message == f"no space left on device while writing history {path}"
    assert path.read_bytes() == before  # was: half a line, warned about by every later read
    append_entry(path, {"sha256": "c" * 64, "source": "three"})
    assert [e["source"] for e in read_history(path).entries] == ["one", "three"]


def test_run_statuses_are_the_words_of_the_documents():
    assert [s.value for s in RunStatus] == ["evaluated", "skipped", "failed"]
    assert RunStatus.EVALUATED == "evaluated" and isinstance(RunStatus.FAILED, str)
    assert RunStatus("skipped") is RunStatus.SKIPPED
    # printed, formatted, in JSON and in CSV: the word, never "RunStatus.SKIPPED"
    assert str(RunStatus.SKIPPED) == f"{RunStatus.SKIPPED}" == "skipped"
    assert json.dumps({RunStatus.FAILED: RunStatus.FAILED}) == '{"failed": "failed"}'
    out = io.StringIO()
    csv.writer(out).writerow([RunStatus.EVALUATED])
    assert out.getvalue().strip() == "evaluated"


def test_an_outcome_holds_a_member_and_documents_the_word():
    outcome = SourceOutcome(Path("a.h5"), "failed", None, "cannot read")
    assert outcome.status is RunStatus.FAILED
    doc = outcome.to_dict()
    assert doc["status"] == "failed" and type(doc["status"]) is str
    with pytest.raises(ValueError):
        SourceOutcome(Path("a.h5"), "done")


def test_status_counts_lists_every_status():
    outcomes = [
        SourceOutcome(Path(n), s)
        for n, s in (("a", RunStatus.SKIPPED), ("b", RunStatus.FAILED), ("c", RunStatus.SKIPPED))
    ]
    counts = status_counts(outcomes)
    assert counts == {"evaluated": 0, "skipped": 2, "failed": 1}
    assert all(type(k) is str for k in counts)
    assert status_counts(iter(outcomes)) == counts  # any iterable
