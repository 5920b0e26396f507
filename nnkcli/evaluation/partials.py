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
from collections.abc import Sequence

import numpy as np

from nnkcli import __version__
from nnkcli.errors import InputError

FORMAT = "partial-results"
FORMAT_VERSION = 1
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    I counts from 0, like ``SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1``.
    """
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

    def __init__(
        self,
        path,
        ev,
        opts,
        k_values: Sequence[int],
        *,
        command: str,
        shard: int,
        n_shards: int,
        rows: tuple[int, int],
        per_class: bool = False,
        alpha: float | None = None,
    ):
        from nnkcli.numerics.scores import TOP
        from nnkcli.storage.array_files import ArrayFileWriter

        self.rows = rows
        self.k_values = [int(k) for k in k_values]
        self.methods = tuple(opts.methods)
        m = rows[1] - rows[0]
        self.file = ArrayFileWriter(path, kind="partial results")
        with self.file.aborted_on_failure():  # a signal while the datasets are declared leaves nothing
            self.file.create("labels", (m,), np.int64)
            for method in self.methods:
                for k in self.k_values:
                    self.file.create(f"{method}/k{k}/top5", (m, TOP), np.int64)
                    if method == "nnk":
                        self.file.create(f"nnk/k{k}/support", (m,), np.int32)
            self.file.check_space()
            self.attrs = {
                "nnk_format": FORMAT,
                "format_version": FORMAT_VERSION,
                "nnkcli_version": __version__,
                "command": command,
                "shard": int(shard),
                "n_shards": int(n_shards),
                "row_start": int(rows[0]),
                "row_stop": int(rows[1]),
                "compatibility": compatibility(ev, opts, self.k_values, command, n_shards),
                "class_names": list(ev.class_names),
                "per_class": bool(per_class),
                "alpha": alpha,
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


def partial_writer(path, ev, options, command: str, *, per_class: bool = False) -> PartialWriter:
    """The partial result file of an evaluation's query rows ``ev.rows`` (``--shard I/N --out PART.h5``)."""
    if options.temperature_grid or options.solver != "exact":
        # a partial file holds one kNN temperature, and merging cannot sum the pruning solver's costs
        raise InputError(
            "sharded runs (--shard) take one --temperature and the exact solver",
            hint="run a temperature grid or --solver pruning on the whole query split",
        )
    shard, n_shards = ev.shard if ev.shard is not None else (0, 1)
    return PartialWriter(
        path,
        ev,
        options,
        options.k_values,
        command=command,
        shard=shard,
        n_shards=n_shards,
        rows=ev.rows,
        per_class=per_class,
        alpha=options.alpha,
    )
