"""History entries keyed by what produced them: the source's sha256 *and* its parameter set.

Two evaluations of one source with other k values, methods, kernel, temperature,
weighting, splits, exclude-self, model or transform are different results; they must
neither hide nor replace each other. An entry's parameter set is its ``parameters``
(recorded whole by the runner) minus the settings that provably do not change a
result — ``threads``, ``chunk_size`` and ``search_kernel`` (results are bit-identical for
every value, tested) and the location of the index (its fingerprint is checked against the
store) — hashed to ``params_key`` (16 hex digits). So a history written before a setting of
this kind existed keeps its keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

#: parameters that do not change any recorded number
NOT_KEYED = ("threads", "chunk_size", "search_kernel", "index_path", "rebuild_index")


def parameter_key(parameters: dict | None) -> str:
    """The key of a parameter set: sha256 of its canonical JSON, 16 hex digits."""
    keyed = {k: v for k, v in (parameters or {}).items() if k not in NOT_KEYED}
    text = json.dumps(keyed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def entry_key(entry: dict) -> str:
    """An entry's ``params_key`` (computed from its parameters for lines written before keys existed)."""
    key = entry.get("params_key")
    return key if isinstance(key, str) and key else parameter_key(entry.get("parameters"))


@dataclass(frozen=True)
class ParamSet:
    """One parameter set of a history: its key, parameters, and how many entries use it."""

    number: int  # 1 = the most recently used
    key: str
    parameters: dict
    n_entries: int
    last_used: str | None


def parameter_sets(entries: Sequence[dict]) -> list[ParamSet]:
    """The history's parameter sets, most recently used first (by finish time, then line order)."""
    last: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    params: dict[str, dict] = {}
    for line, entry in enumerate(entries):
        key = entry_key(entry)
        counts[key] = counts.get(key, 0) + 1
        params.setdefault(key, entry.get("parameters") or {})
        stamp = (str(entry.get("finished_at") or ""), line)
        if key not in last or stamp > last[key]:
            last[key] = stamp
    ordered = sorted(last, key=lambda k: last[k], reverse=True)
    return [ParamSet(i + 1, key, params[key], counts[key], last[key][0] or None) for i, key in enumerate(ordered)]


def pick_parameter_set(sets: Sequence[ParamSet], choice: str | None) -> ParamSet | None:
    """``None`` -> the most recent; ``"2"`` -> the second; a hex prefix -> the set whose key starts with it.

    Raises ``LookupError`` naming what is available when nothing (or more than one) matches.
    """
    if not sets:
        return None
    if choice is None:
        return sets[0]
    text = choice.strip().lower()
    if text.isdigit() and 1 <= int(text) <= len(sets) and len(text) < 4:
        return sets[int(text) - 1]
    found = [s for s in sets if s.key.startswith(text)]
    if len(found) == 1:
        return found[0]
    listing = ", ".join(f"{s.number} ({s.key})" for s in sets)
    what = "matches more than one" if found else "matches none"
    raise LookupError(f"--param-set {choice!r} {what} of the parameter sets: {listing}")


def latest_per_source(entries: Sequence[dict]) -> list[dict]:
    """One entry per source sha256 (the newer line wins: a ``--force`` re-evaluation replaces the older)."""
    by_sha: dict[str, dict] = {}
    for entry in entries:  # file order: later lines are newer
        by_sha.pop(entry["sha256"], None)
        by_sha[entry["sha256"]] = entry
    return list(by_sha.values())


def entries_of(entries: Sequence[dict], key: str) -> list[dict]:
    """The entries of parameter set ``key``, one per source (the newest)."""
    return latest_per_source([e for e in entries if entry_key(e) == key])


def describe_parameters(parameters: dict) -> str:
    """A short line: the settings that tell parameter sets apart."""
    p = parameters or {}
    parts = []
    if p.get("k_values"):
        from nnkcli.evaluation.kspec import format_k_spec

        parts.append(f"k {format_k_spec(p['k_values'])}")
    for key, label in (
        ("methods", "methods"),
        ("kernel", "kernel"),
        ("temperature", "T"),
        ("weighting", "weighting"),
        ("train_split", "train"),
        ("query_split", "query"),
    ):
        if key in p:
            value = p[key]
            parts.append(f"{label} {','.join(value) if isinstance(value, list) else value}")
    if p.get("exclude_self"):
        parts.append("exclude-self")
    if p.get("model"):
        parts.append(f"model {p['model'].get('model') if isinstance(p['model'], dict) else p['model']}")
    return ", ".join(parts)
