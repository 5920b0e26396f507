"""``nnk merge``: partial result files of one sharded run into the whole run's document.

The writer side (``--shard I/N`` during classify/sweep) is ``evaluation.partials``; this
module reads the parts back, checks they cover the queries once and agree on every
parameter, and builds the same document the unsharded run gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.partials import FORMAT, FORMAT_VERSION, shard_rows
from nnkcli.evaluation.results import ClassifyResult, EvaluationResult, SweepResult


class Part(TypedDict):
    """One partial result file as read: its path, root attributes (JSON decoded) and arrays by name."""

    path: str
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]


def _describe(part: Part) -> str:
    return f"shard {part['attrs']['shard']}/{part['attrs']['n_shards']} ({part['path']})"


def read_parts(paths: Sequence[str | Path]) -> list[Part]:
    """Read and check partial result files: same run, every shard exactly once. Sorted by shard."""
    from nnkcli.storage.array_files import read_array_file

    if not paths:
        raise InputError("no partial result files given", hint="nnk merge PART.h5 [PART.h5 ...]")
    parts: list[Part] = []
    for path in paths:
        attrs, arrays = read_array_file(path, kind="partial results")
        if attrs.get("nnk_format") != FORMAT:
            raise InputError(
                f"{path} is not a partial result file (nnk_format {attrs.get('nnk_format')!r})",
                hint="give the files written by classify/sweep --shard I/N --out PART.h5",
            )
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{path} has partial-results format version {attrs.get('format_version')}, "
                f"this nnkcli reads version {FORMAT_VERSION}"
            )
        parts.append({"path": str(path), "attrs": attrs, "arrays": arrays})
    ref = parts[0]["attrs"]["compatibility"]
    for part in parts[1:]:
        other = part["attrs"]["compatibility"]
        for key in ref:
            if other.get(key) != ref[key]:
                raise InputError(
                    f"{_describe(part)} does not match {_describe(parts[0])}: different {key} "
                    f"({other.get(key)!r} vs {ref[key]!r})",
                    hint="merge only the parts of one run (same store, index, options and --shard I/N count)",
                )
    n_shards = ref["n_shards"]
    seen: dict[int, Part] = {}
    for part in parts:
        i = part["attrs"]["shard"]
        if i in seen:
            raise InputError(
                f"shard {i}/{n_shards} is given twice: {seen[i]['path']} and {part['path']}",
                hint="give each shard's file once",
            )
        seen[i] = part
    missing = [i for i in range(n_shards) if i not in seen]
    if missing:
        n_q = ref["query"]["n"]
        named = ", ".join(
            f"{i}/{n_shards} (queries {a}:{b})" for i in missing[:5] for a, b in [shard_rows(n_q, i, n_shards)]
        )
        raise InputError(
            f"{len(missing)} of {n_shards} shards are missing: {named}" + (" ..." if len(missing) > 5 else ""),
            hint="run the missing shards (same command with --shard I/N) and merge again",
        )
    ordered = [seen[i] for i in range(n_shards)]
    for i, part in enumerate(ordered):
        want = shard_rows(ref["query"]["n"], i, n_shards)
        got = (part["attrs"]["row_start"], part["attrs"]["row_stop"])
        if got != want or len(part["arrays"].get("labels", ())) != want[1] - want[0]:
            raise InputError(
                f"{_describe(part)} holds queries {got[0]}:{got[1]}, expected {want[0]}:{want[1]}",
                hint="the file is damaged or was not written by this nnkcli; rerun that shard",
            )
    return ordered


def merge_parts(paths: Sequence[str | Path], *, out: str | Path | None = None) -> EvaluationResult:
    """The result of the unsharded run (a ``ClassifyResult`` or ``SweepResult``), from the partial result
    files of all its shards.

    With ``out``, also writes the merged per-query predictions as one partial result
    file covering every query (shard 0/1), which ``merge`` accepts again.
    """
    from nnkcli.numerics.metrics import Accumulator

    parts = read_parts(paths)
    first = parts[0]["attrs"]
    compat, template = first["compatibility"], first["document"]
    methods, k_values = compat["parameters"]["methods"], compat["k_values"]
    command = compat["command"]
    n_classes = int(template["n_classes"])
    keep_hits = command == "sweep"
    params = compat["parameters"]
    # the rows say which temperature (kNN) and solver (NNK) made them, as the unsharded run's do
    row_info = {"knn": {"temperature": params.get("temperature")}, "nnk": {"solver": params.get("solver")}}
    accs = {
        (m, k): Accumulator(m, k, n_classes, keep_hits=keep_hits, **row_info.get(m, {}))
        for m in methods
        for k in k_values
    }
    for part in parts:
        arrays = part["arrays"]
        labels = arrays["labels"]
        if not len(labels):
            continue
        for (m, k), acc in accs.items():
            support = arrays.get(f"nnk/k{k}/support") if m == "nnk" else None
            acc.update(arrays[f"{m}/k{k}/top5"], labels, support)
    doc = _merged_document(parts, template, accs, command, k_values, methods)
    if out is not None:
        _write_merged(out, parts, doc)
        if command == "classify":
            doc["predictions_path"] = str(out)
    return SweepResult(doc) if command == "sweep" else ClassifyResult(doc)


def _merged_document(parts: list[Part], template, accs, command, k_values, methods) -> dict:
    params = template.get("parameters", {})
    confidence = params.get("confidence", 0.95)
    per_class = bool(parts[0]["attrs"].get("per_class", False))
    class_names = list(parts[0]["attrs"]["class_names"])
    kwargs = {"per_class": per_class, "class_names": class_names}
    if "confidence" in params:
        kwargs["confidence"] = confidence
    results = [acc.result(**kwargs) for acc in accs.values()]
    doc = {key: value for key, value in template.items() if key not in ("shard", "predictions_path")}
    doc["results"] = results
    doc["timing"] = _summed_timing([p["attrs"]["document"].get("timing", {}) for p in parts])
    doc["merged_shards"] = len(parts)
    if command == "sweep":
        from nnkcli.evaluation.sweeps import finish_sweep_document

        hits = {key: acc.hits()[0] for key, acc in accs.items()}
        finish_sweep_document(doc, k_values, methods, hits, parts[0]["attrs"]["alpha"])
    return doc


def _summed_timing(timings: list[dict]) -> dict:
    out: dict = {}
    for t in timings:
        for key, value in t.items():
            if isinstance(value, (int, float)) and key not in ("queries_per_s", "chunk_size"):
                out[key] = round(out.get(key, 0) + value, 4)
    out["summed_over_shards"] = len(timings)
    return out


def _write_merged(out, parts: list[Part], doc) -> None:
    from nnkcli.storage.array_files import ArrayFileWriter

    first = parts[0]["attrs"]
    names = list(parts[0]["arrays"])
    n = first["compatibility"]["query"]["n"]
    writer = ArrayFileWriter(out, kind="partial results")
    try:
        for name in names:
            sample = parts[0]["arrays"][name]
            writer.create(name, (n,) + sample.shape[1:], sample.dtype)
        writer.check_space()
        for part in parts:
            for name in names:
                writer.write(name, part["attrs"]["row_start"], part["arrays"][name])
        template = {key: value for key, value in doc.items() if key not in ("results", "best")}
        writer.set_attrs(
            {
                **first,
                "shard": 0,
                "n_shards": 1,
                "row_start": 0,
                "row_stop": n,
                "compatibility": {**first["compatibility"], "n_shards": 1},
                "document": template,
            }
        )
    except BaseException:
        writer.abort()
        raise
    writer.commit()
