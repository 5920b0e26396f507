"""Query shards: ``classify``/``sweep --shard I/N --out PART.h5`` and ``nnk merge PART.h5 ...``.

A job array runs the same command N times with ``--shard 0/N`` ... ``--shard N-1/N``;
shard I evaluates only the I-th of N contiguous ranges of the query split (sizes differ
by at most one query; with N > n_queries some ranges are empty) and writes a partial
result file (HDF5, written atomically)::

    /labels                 (m,)    int64  true labels of the shard's queries (-1 = unlabelled)
    /<method>/k<k>/top5     (m, 5)  int64  predicted classes, best first (-1 = none)
    /nnk/k<k>/support       (m,)    int32  NNK support sizes
    attrs: nnk_format = "partial-results", format_version, command, shard, n_shards, row_start,
           row_stop, what the run was (``compatibility``: store content, splits, index
           fingerprint, parameters, k values) and the result document without its results

``merge`` checks that the parts were made from the same store, index and options and
that they cover the query split exactly once, then replays every query's predictions
into the same accumulators one unsharded run fills, in query order: accuracies,
intervals, per-class rows, the sweep table and the best/recommended k are those of the
unsharded run, exactly. Only ``timing`` differs (it is summed over the parts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from nnkcli import __version__
from nnkcli.errors import InputError

FORMAT = "partial-results"
FORMAT_VERSION = 1
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (I counts from 0, like ``SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1``)."""
    m = _SHARD.match(str(text))
    if not m:
        raise InputError(f"bad shard {text!r}", hint="give I/N with 0 <= I < N, e.g. --shard 0/8")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"bad shard {text!r}: need 0 <= I < N", hint="shards count from 0: 0/8 ... 7/8")
    return i, n


def shard_rows(n_queries: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Rows ``start:stop`` of shard ``shard`` of ``n_shards``: contiguous, the first ``n % N`` one longer."""
    base, extra = divmod(int(n_queries), int(n_shards))
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def compatibility(ev, opts, k_values, command: str, n_shards: int) -> dict:
    """What two parts must share to be merged: the data, the index, every option, the k values."""
    return {
        "command": command,
        "n_shards": int(n_shards),
        "train": {"split": ev.train.name, "n": int(ev.train.n), "content_sha256": ev.train.content_sha256},
        "query": {"split": ev.query.name, "n": int(ev.query.n), "content_sha256": ev.query.content_sha256},
        "index": {key: ev.index_info.get(key) for key in ("type", "shards", "backend") if key in ev.index_info},
        "parameters": opts.as_dict(),
        "k_values": [int(k) for k in k_values],
    }


class PartialWriter:
    """Receives ``ChunkResult``s of one shard's run and commits one partial result file."""

    def __init__(self, path, ev, opts, k_values: Sequence[int], *, command: str, shard: int, n_shards: int,
                 rows: tuple[int, int], per_class: bool = False, alpha: float | None = None):
        from nnkcli.evaluation.classification import TOP
        from nnkcli.storage.store import ArrayFileWriter

        self.rows = rows
        self.k_values = [int(k) for k in k_values]
        self.methods = tuple(opts.methods)
        m = rows[1] - rows[0]
        self.file = ArrayFileWriter(path, kind="partial results")
        self.file.create("labels", (m,), np.int64)
        for method in self.methods:
            for k in self.k_values:
                self.file.create(f"{method}/k{k}/top5", (m, TOP), np.int64)
                if method == "nnk":
                    self.file.create(f"nnk/k{k}/support", (m,), np.int32)
        self.file.check_space()
        self.attrs = {
            "nnk_format": FORMAT, "format_version": FORMAT_VERSION, "nnkcli_version": __version__,
            "command": command, "shard": int(shard), "n_shards": int(n_shards),
            "row_start": int(rows[0]), "row_stop": int(rows[1]),
            "compatibility": compatibility(ev, opts, self.k_values, command, n_shards),
            "class_names": list(ev.class_names), "per_class": bool(per_class), "alpha": alpha,
        }

    def write(self, chunk) -> None:
        s = chunk.start - self.rows[0]
        self.file.write("labels", s, chunk.labels)
        for (method, k), mc in chunk.by_method_k.items():
            self.file.write(f"{method}/k{k}/top5", s, mc.top)
            if method == "nnk":
                self.file.write(f"nnk/k{k}/support", s, np.asarray(mc.support, dtype=np.int32))

    def commit(self, document: dict) -> None:
        """``document``: this shard's result document; kept (without results) as the merge's template."""
        template = {key: value for key, value in document.items() if key not in ("results", "best")}
        self.file.set_attrs({**self.attrs, "document": template})
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


def _describe(part: dict) -> str:
    return f"shard {part['attrs']['shard']}/{part['attrs']['n_shards']} ({part['path']})"


def read_parts(paths: Sequence[str | Path]) -> list[dict]:
    """Read and check partial result files: same run, every shard exactly once. Sorted by shard."""
    from nnkcli.storage.array_files import read_array_file

    if not paths:
        raise InputError("no partial result files given", hint="nnk merge PART.h5 [PART.h5 ...]")
    parts = []
    for path in paths:
        attrs, arrays = read_array_file(path, kind="partial results")
        if attrs.get("nnk_format") != FORMAT:
            raise InputError(f"{path} is not a partial result file (nnk_format {attrs.get('nnk_format')!r})",
                             hint="give the files written by classify/sweep --shard I/N --out PART.h5")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path} has partial-results format version {attrs.get('format_version')}, "
                             f"this nnkcli reads version {FORMAT_VERSION}")
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
    seen: dict[int, dict] = {}
    for part in parts:
        i = part["attrs"]["shard"]
        if i in seen:
            raise InputError(f"shard {i}/{n_shards} is given twice: {seen[i]['path']} and {part['path']}",
                             hint="give each shard's file once")
        seen[i] = part
    missing = [i for i in range(n_shards) if i not in seen]
    if missing:
        n_q = ref["query"]["n"]
        named = ", ".join(f"{i}/{n_shards} (queries {a}:{b})" for i in missing[:5]
                          for a, b in [shard_rows(n_q, i, n_shards)])
        raise InputError(f"{len(missing)} of {n_shards} shards are missing: {named}"
                         + (" ..." if len(missing) > 5 else ""),
                         hint="run the missing shards (same command with --shard I/N) and merge again")
    ordered = [seen[i] for i in range(n_shards)]
    for i, part in enumerate(ordered):
        want = shard_rows(ref["query"]["n"], i, n_shards)
        got = (part["attrs"]["row_start"], part["attrs"]["row_stop"])
        if got != want or len(part["arrays"].get("labels", ())) != want[1] - want[0]:
            raise InputError(f"{_describe(part)} holds queries {got[0]}:{got[1]}, expected {want[0]}:{want[1]}",
                             hint="the file is damaged or was not written by this nnkcli; rerun that shard")
    return ordered


def merge_parts(paths: Sequence[str | Path], *, out: str | Path | None = None) -> dict:
    """The result document of the unsharded run, from the partial result files of all its shards.

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
    accs = {(m, k): Accumulator(m, k, n_classes, keep_hits=keep_hits) for m in methods for k in k_values}
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
    return doc


def _merged_document(parts, template, accs, command, k_values, methods) -> dict:
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


def _write_merged(out, parts, doc) -> None:
    from nnkcli.storage.store import ArrayFileWriter

    first = parts[0]["attrs"]
    names = [name for name in parts[0]["arrays"]]
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
        writer.set_attrs({**first, "shard": 0, "n_shards": 1, "row_start": 0, "row_stop": n,
                          "compatibility": {**first["compatibility"], "n_shards": 1}, "document": template})
    except BaseException:
        writer.abort()
        raise
    writer.commit()
