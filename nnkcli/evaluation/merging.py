"""``nnk merge``: partial result files of one sharded run into the whole run's document.

The writer side (``--shard I/N`` during classify/sweep) is ``evaluation.partials``; this
module reads the parts back, checks they cover the queries once and agree on every
parameter, and builds the same document the unsharded run gives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnkcli.errors import InputError, NnkError
from nnkcli.evaluation.partials import FORMAT, FORMAT_VERSION, shard_rows
from nnkcli.evaluation.results import ClassifyResult, EvaluationResult, SweepResult

#: queries read per block from each part (a few MB of top-5 ids per (method, k))
BLOCK_ROWS = 65_536
_DAMAGED_HINT = "the file is damaged or was not written by this nnkcli; rerun that shard"


@dataclass
class Part:
    """One partial result file, open: its path, root attributes (JSON decoded, checked), the
    datasets a merge replays (``(name, shape after the rows, dtype)``) and the reader."""

    path: str
    attrs: dict[str, Any]
    file: Any  # nnkcli.storage.array_files.ArrayFileReader
    datasets: list[tuple[str, tuple[int, ...], Any]]

    @property
    def n_rows(self) -> int:
        return int(self.attrs["row_stop"]) - int(self.attrs["row_start"])

    def blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first row within the part, {name: rows})`` for consecutive blocks of rows."""
        for start in range(0, self.n_rows, block_rows):
            stop = min(self.n_rows, start + block_rows)
            yield start, {name: self.file.read(name, start, stop) for name, _, _ in self.datasets}


def _describe(part: Part) -> str:
    return f"shard {part.attrs['shard']}/{part.attrs['n_shards']} ({part.path})"


def _damaged(path, what: str) -> InputError:
    return InputError(f"{path} is not a valid partial result file: {what}", hint=_DAMAGED_HINT)


_TYPES: dict[str, tuple[type, ...]] = {
    "an integer": (int,),
    "a number": (int, float),
    "a string": (str,),
    "a list": (list,),
    "an object": (dict,),
    "true or false": (bool,),
}


def _field(path, mapping: dict, key: str, expected: str, where: str = "") -> Any:
    """``mapping[key]``, refused by name when missing or not of the ``expected`` type (a key of ``_TYPES``)."""
    name = f"{where}{key}"
    if key not in mapping:
        raise _damaged(path, f"attribute '{name}' is missing")
    value = mapping[key]
    ok = isinstance(value, _TYPES[expected]) and (expected == "true or false" or not isinstance(value, bool))
    if ok and expected == "a number":
        ok = math.isfinite(value)
    if not ok:
        text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise _damaged(path, f"attribute '{name}' is {text}, expected {expected}")
    return value


def _check_attrs(path, attrs: dict) -> None:
    """Every attribute a merge uses, by type and range, before any is used."""
    from nnkcli.errors import OptionError
    from nnkcli.evaluation.options import ScoringOptions

    if _field(path, attrs, "format_version", "an integer") != FORMAT_VERSION:
        raise InputError(
            f"{path} has partial-results format version {attrs['format_version']}, "
            f"this nnkcli reads version {FORMAT_VERSION}"
        )
    command = _field(path, attrs, "command", "a string")
    if command not in ("classify", "sweep"):
        raise _damaged(path, f"attribute 'command' is {command!r}, expected 'classify' or 'sweep'")
    n_shards = _field(path, attrs, "n_shards", "an integer")
    shard = _field(path, attrs, "shard", "an integer")
    if not 0 <= shard < n_shards:
        raise _damaged(path, f"shard {shard} of {n_shards}: need 0 <= shard < n_shards")
    start, stop = _field(path, attrs, "row_start", "an integer"), _field(path, attrs, "row_stop", "an integer")
    if not 0 <= start <= stop:
        raise _damaged(path, f"rows {start}:{stop}: need 0 <= row_start <= row_stop")
    compat = _field(path, attrs, "compatibility", "an object")
    if _field(path, compat, "command", "a string", "compatibility.") != command:
        raise _damaged(path, f"compatibility.command {compat['command']!r} is not its command {command!r}")
    if _field(path, compat, "n_shards", "an integer", "compatibility.") != n_shards:
        raise _damaged(path, f"compatibility.n_shards {compat['n_shards']} is not its n_shards {n_shards}")
    query = _field(path, compat, "query", "an object", "compatibility.")
    if _field(path, query, "n", "an integer", "compatibility.query.") < 0:
        raise _damaged(path, f"compatibility.query.n is {query['n']}, expected >= 0")
    params = _field(path, compat, "parameters", "an object", "compatibility.")
    try:
        opts = ScoringOptions(**params)
    except (OptionError, TypeError) as exc:
        raise _damaged(path, f"compatibility.parameters are not valid: {exc}") from None
    k_values = _field(path, compat, "k_values", "a list", "compatibility.")
    if not k_values or list(opts.k_values) != k_values:
        raise _damaged(path, f"compatibility.k_values {k_values!r} are not the k of its parameters")
    document = _field(path, attrs, "document", "an object")
    n_classes = _field(path, document, "n_classes", "an integer", "document.")
    names = _field(path, attrs, "class_names", "a list")
    if n_classes < 1 or len(names) != n_classes or not all(isinstance(c, str) for c in names):
        raise _damaged(path, f"class_names are not {n_classes} strings (document.n_classes)")
    for key in ("parameters", "timing"):
        if key in document:
            _field(path, document, key, "an object", "document.")
    confidence = document.get("parameters", {}).get("confidence", 0.95)
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise _damaged(path, f"attribute 'document.parameters.confidence' is {confidence!r}, expected in (0, 1)")
    if "per_class" in attrs:
        _field(path, attrs, "per_class", "true or false")
    if command == "sweep" and not 0 < _field(path, attrs, "alpha", "a number") < 1:
        raise _damaged(path, f"attribute 'alpha' is {attrs['alpha']!r}, expected in (0, 1)")


def _dataset_layout(compat: dict) -> list[tuple[str, tuple[int, ...], Any]]:
    """The datasets of a part, as ``PartialWriter`` declares them: name, shape after the rows, dtype."""
    from nnkcli.numerics.scores import TOP

    out: list[tuple[str, tuple[int, ...], Any]] = [("labels", (), np.int64)]
    for method in compat["parameters"]["methods"]:
        for k in compat["k_values"]:
            out.append((f"{method}/k{k}/top5", (TOP,), np.int64))
            if method == "nnk":
                out.append((f"nnk/k{k}/support", (), np.int32))
    return out


def _open_part(path: str | Path, stack: contextlib.ExitStack) -> Part:
    from nnkcli.storage.array_files import ArrayFileReader

    reader = stack.enter_context(ArrayFileReader(path, kind="partial result", nnk_format=None))
    attrs = reader.attrs
    if attrs.get("nnk_format") != FORMAT:
        raise InputError(
            f"{path} is not a partial result file (nnk_format {attrs.get('nnk_format')!r})",
            hint="give the files written by classify/sweep --shard I/N --out PART.h5",
        )
    _check_attrs(path, attrs)
    return Part(str(path), attrs, reader, _dataset_layout(attrs["compatibility"]))


@contextlib.contextmanager
def open_parts(paths: Sequence[str | Path]) -> Iterator[list[Part]]:
    """Open and check partial result files: same run, every shard exactly once, each one's
    attributes and datasets as ``PartialWriter`` writes them. Sorted by shard; closed on exit.

    Nothing is read whole: the data are checked (their declared shapes against the rows the
    file holds) and read later in blocks, so a crafted file is refused in bounded memory and time.
    """
    if not paths:
        raise InputError("no partial result files given", hint="nnk merge PART.h5 [PART.h5 ...]")
    with contextlib.ExitStack() as stack:
        parts = [_open_part(path, stack) for path in paths]
        yield _check_parts(parts)


def _check_parts(parts: list[Part]) -> list[Part]:
    ref = parts[0].attrs["compatibility"]
    for part in parts[1:]:
        other = part.attrs["compatibility"]
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
        i = part.attrs["shard"]
        if i in seen:
            raise InputError(
                f"shard {i}/{n_shards} is given twice: {seen[i].path} and {part.path}",
                hint="give each shard's file once",
            )
        seen[i] = part
    if len(seen) < n_shards:
        # n_shards comes from a file: list the first few missing shards without counting to it
        first = []
        for i in range(n_shards):
            if i not in seen:
                first.append(i)
                if len(first) == 6:
                    break
        n_q = ref["query"]["n"]
        named = ", ".join(
            f"{i}/{n_shards} (queries {a}:{b})" for i in first[:5] for a, b in [shard_rows(n_q, i, n_shards)]
        )
        raise InputError(
            f"{n_shards - len(seen)} of {n_shards} shards are missing: {named}" + (" ..." if len(first) > 5 else ""),
            hint="run the missing shards (same command with --shard I/N) and merge again",
        )
    ordered = [seen[i] for i in range(n_shards)]
    for i, part in enumerate(ordered):
        want = shard_rows(ref["query"]["n"], i, n_shards)
        got = (part.attrs["row_start"], part.attrs["row_stop"])
        if got != want:
            raise InputError(
                f"{_describe(part)} holds queries {got[0]}:{got[1]}, expected {want[0]}:{want[1]}", hint=_DAMAGED_HINT
            )
        for name, tail, _ in part.datasets:
            try:
                part.file.require(name, (part.n_rows, *tail), kinds="iu")
            except NnkError as exc:
                raise InputError(exc.message, hint=_DAMAGED_HINT) from None
    return ordered


def _check_values(part: Part, offset: int, block: dict[str, np.ndarray], n_classes: int) -> None:
    """Labels and predicted classes in -1 .. C-1, support sizes in 0 .. k: else wrong counts, silently."""
    for name, values in block.items():
        if name.endswith("/support"):
            low, high = 0, int(name.split("/")[1][1:])
        else:
            low, high = -1, n_classes - 1
        bad = np.flatnonzero(((values < low) | (values > high)).reshape(len(values), -1).any(axis=1))
        if bad.size:
            row = int(bad[0])
            value = values[row] if values.ndim == 1 else values[row].tolist()
            raise _damaged(part.path, f"dataset '{name}' holds {value} at row {offset + row}, outside {low}..{high}")


def merge_parts(
    paths: Sequence[str | Path], *, out: str | Path | None = None, block_rows: int = BLOCK_ROWS
) -> EvaluationResult:
    """The result of the unsharded run (a ``ClassifyResult`` or ``SweepResult``), from the partial result
    files of all its shards.

    With ``out``, also writes the merged per-query predictions as one partial result
    file covering every query (shard 0/1), which ``merge`` accepts again. The parts are
    read ``block_rows`` queries at a time.
    """
    from nnkcli.numerics.metrics import Accumulator

    with open_parts(paths) as parts:
        first = parts[0].attrs
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
            for offset, block in part.blocks(block_rows):
                _check_values(part, offset, block, n_classes)
                labels = block["labels"].astype(np.int64, copy=False)
                for (m, k), acc in accs.items():
                    support = block.get(f"nnk/k{k}/support") if m == "nnk" else None
                    acc.update(block[f"{m}/k{k}/top5"].astype(np.int64, copy=False), labels, support)
        doc = _merged_document(parts, template, accs, command, k_values, methods)
        if out is not None:
            _write_merged(out, parts, doc, block_rows)
            if command == "classify":
                doc["predictions_path"] = str(out)
    return SweepResult(doc) if command == "sweep" else ClassifyResult(doc)


def _merged_document(parts: list[Part], template, accs, command, k_values, methods) -> dict:
    params = template.get("parameters", {})
    confidence = params.get("confidence", 0.95)
    per_class = bool(parts[0].attrs.get("per_class", False))
    class_names = list(parts[0].attrs["class_names"])
    kwargs = {"per_class": per_class, "class_names": class_names}
    if "confidence" in params:
        kwargs["confidence"] = confidence
    results = [acc.result(**kwargs) for acc in accs.values()]
    doc = {key: value for key, value in template.items() if key not in ("shard", "predictions_path")}
    doc["results"] = results
    doc["timing"] = _summed_timing([p.attrs["document"].get("timing", {}) for p in parts])
    doc["merged_shards"] = len(parts)
    if command == "sweep":
        from nnkcli.evaluation.sweeps import finish_sweep_document

        hits = {key: acc.hits()[0] for key, acc in accs.items()}
        finish_sweep_document(doc, k_values, methods, hits, parts[0].attrs["alpha"])
    return doc


def _summed_timing(timings: list[dict]) -> dict:
    out: dict = {}
    for t in timings:
        for key, value in t.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                if key not in ("queries_per_s", "chunk_size"):
                    out[key] = round(out.get(key, 0) + value, 4)
    out["summed_over_shards"] = len(timings)
    return out


def _write_merged(out, parts: list[Part], doc, block_rows: int) -> None:
    from nnkcli.storage.array_files import ArrayFileWriter

    first = parts[0].attrs
    n = first["compatibility"]["query"]["n"]
    writer = ArrayFileWriter(out, kind="partial results")
    try:
        for name, tail, dtype in parts[0].datasets:
            writer.create(name, (n, *tail), dtype)
        writer.check_space()
        for part in parts:
            for offset, block in part.blocks(block_rows):
                for name, values in block.items():
                    writer.write(name, part.attrs["row_start"] + offset, values)
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
