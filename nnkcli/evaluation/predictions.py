"""Per-query results of ``classify --out PRED.h5``, streamed chunk by chunk, written atomically.

Layout (datasets are row-aligned with the query split)::

    /neighbors      (n_q, k) int64    row ids into the train split, most similar first
    /similarities   (n_q, k) float32  cosine similarities
    /labels         (n_q,)   int64    true labels (-1 = unlabelled)
    /<method>/scores (n_q, C) float32 class scores (knn: summed weights; nnk: normalized mass)
    /<method>/top5   (n_q, 5) int64   classes by descending score (-1 = no class)
    /nnk/weights    (n_q, k) float32  raw NNK weights theta (not normalized), to check the KKT conditions
    attrs: every parameter, the store's and the index's fingerprints, the nnkcli version.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nnkcli import __version__
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.numerics.scores import TOP


class PredictionWriter:
    """Receives ``ChunkResult``s from ``classification.evaluate_chunks`` and commits one HDF5 file at the end."""

    def __init__(self, path: str | os.PathLike, ev, opts: ScoringOptions):
        from nnkcli.storage.store import ArrayFileWriter

        n, C = int(ev.query.n), int(ev.n_classes)
        (k,) = opts.k_values
        self.k = k
        self.methods = opts.methods
        self.file = ArrayFileWriter(path, kind="predictions")
        self.file.create("neighbors", (n, k), np.int64)
        self.file.create("similarities", (n, k), np.float32)
        self.file.create("labels", (n,), np.int64)
        for method in opts.methods:
            self.file.create(f"{method}/scores", (n, C), np.float32)
            self.file.create(f"{method}/top5", (n, TOP), np.int64)
        if "nnk" in opts.methods:
            self.file.create("nnk/weights", (n, k), np.float32)
        self.file.check_space()  # before the first query is scored
        self._fingerprints = {
            "train": {"split": ev.train.name, "n": int(ev.train.n), "dim": int(ev.train.dim),
                      "content_sha256": ev.train.content_sha256},
            "query": {"split": ev.query.name, "n": int(ev.query.n), "dim": int(ev.query.dim),
                      "content_sha256": ev.query.content_sha256},
            "index": ev.index_info,
        }

    def write(self, chunk) -> None:
        s = chunk.start
        self.file.write("neighbors", s, chunk.ids)
        self.file.write("similarities", s, chunk.sims.astype(np.float32))
        self.file.write("labels", s, chunk.labels)
        for method in self.methods:
            mc = chunk.by_method_k[(method, self.k)]
            self.file.write(f"{method}/scores", s, mc.scores.astype(np.float32))
            self.file.write(f"{method}/top5", s, mc.top)
            if method == "nnk":
                self.file.write("nnk/weights", s, mc.theta.astype(np.float32))
        self.file.flush()

    def commit(self, document: dict) -> None:
        self.file.set_attrs({
            "nnk_format": "predictions",
            "format_version": 1,
            "nnkcli_version": __version__,
            "k": self.k,
            "methods": json.dumps(list(self.methods)),
            "parameters": json.dumps(document.get("parameters", {})),
            "fingerprints": json.dumps(self._fingerprints),
            "store": str(document.get("store", "")),
        })
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()
