"""nnkcli.tracking.views: each method's best entry, read from the entries' numbers."""

from __future__ import annotations

import hashlib
import math

from nnkcli.tracking.views import best_entries, best_summary, history_rows


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def entry(n: int, step, **top1) -> dict:
    best = {m: {"k": 10 * n, "top1": v, "top5": 99.0} for m, v in top1.items()}
    return {"source": f"/runs/ckpt{n}.pth", "sha256": sha(n), "step": step, "best": best}


ENTRIES = [  # file order is not training order
    entry(1, 30, nnk=71.0, knn=69.0),
    entry(2, 10, nnk=72.5, knn=70.0),
    entry(3, None, nnk=72.5, knn=float("nan")),  # no step: after the others; ties lose to step 10
    entry(4, 20, knn=70.0),  # a tie with step 10 for knn: the earlier step wins
    entry(5, 40, svm="bad"),  # no finite top-1 for its method
]


def oracle(entries, method):
    """The best entry by a plain scan in training order (step first; no step last), first on ties."""
    ordered = sorted(entries, key=lambda e: (e["step"] is None, e["step"] or 0))
    best = None
    for e in ordered:
        v = e["best"].get(method, {}).get("top1")
        if isinstance(v, float) and math.isfinite(v) and (best is None or v > best["best"][method]["top1"]):
            best = e
    return best


def test_best_entries_match_a_plain_scan():
    found = best_entries(ENTRIES)
    assert list(found) == ["nnk", "knn"]  # svm has no finite top-1 anywhere
    for method in ("nnk", "knn"):
        assert found[method] is oracle(ENTRIES, method)
    assert found["nnk"]["sha256"] == sha(2) and found["knn"]["sha256"] == sha(2)


def test_best_entries_for_the_methods_asked_in_their_order():
    assert list(best_entries(ENTRIES, ["knn", "nnk", "svm"])) == ["knn", "nnk"]
    assert best_entries([]) == {}


def test_best_summary_is_plain_numbers():
    assert best_summary(ENTRIES[:2]) == {
        "nnk": {"source": "/runs/ckpt2.pth", "sha256": sha(2), "step": 10, "top1": 72.5, "k": 20},
        "knn": {"source": "/runs/ckpt2.pth", "sha256": sha(2), "step": 10, "top1": 70.0, "k": 20},
    }


def test_the_rows_mark_the_same_best_entries():
    rows = history_rows(ENTRIES)
    found = best_entries(ENTRIES)
    for method, best in found.items():
        marked = [r for r in rows if method in r["best"].split()]
        assert [r["sha256"] for r in marked] == [best["sha256"][:12]]


def test_history_view_shows_one_parameter_set_newest_line_per_source(tmp_path):
    import pytest

    from nnkcli.tracking.history import append_entry, read_history
    from nnkcli.tracking.views import history_view

    path = tmp_path / "h.jsonl"
    for e, key, finished in (
        (entry(1, 10, nnk=70.0), "aaaa1111", "2024-01-01"),
        (entry(2, 20, nnk=75.0), "bbbb2222", "2024-01-02"),
        ({**entry(1, 10, nnk=71.0), "forced": True}, "aaaa1111", "2024-01-03"),  # again
        (entry(3, 30, nnk=72.0), "aaaa1111", "2024-01-04"),
    ):
        append_entry(path, {**e, "params_key": key, "parameters": {"k": key}, "finished_at": finished})
    view = history_view(read_history(path))
    assert view.chosen.key == "aaaa1111" and [s.key for s in view.others] == ["bbbb2222"]
    assert sorted(e["best"]["nnk"]["top1"] for e in view.entries) == [71.0, 72.0]  # source 1's newest line
    doc = view.to_dict()
    assert doc["n_entries"] == 2 and doc["methods"] == ["nnk"]
    assert doc["best"]["nnk"]["top1"] == 72.0 and doc["best"]["nnk"]["step"] == 30
    assert doc["other_parameter_sets"] == [{"number": 2, "key": "bbbb2222", "entries": 1}]
    assert history_view(read_history(path), "2").to_dict()["best"]["nnk"]["top1"] == 75.0
    with pytest.raises(LookupError):
        history_view(read_history(path), "ffff")
    empty = history_view(read_history(tmp_path / "none.jsonl"))
    assert empty.chosen is None and empty.to_dict()["rows"] == [] and empty.to_dict()["best"] == {}
