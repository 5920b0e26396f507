"""Per-query results of ``classify --out PRED.h5``, streamed chunk by chunk, written atomically.

Layout (datasets are row-aligned with the query split)::

    /neighbors      (n_q, k) int64    row ids into the train split, most similar first
    /similarities   (n_q, k) float32  cosine similarities
    /labels         (n_q,)   int64    true labels (-1 = unlabelled)
    /<method>/scores (n_q, C) float32 class scores (knn: summed weights; nnk: normalized mass)
    /<method>/top5   (n_q, 5) int64   classes by descending score (-1 = no class)
    /nnk/weights    (n_q, k) float32  raw NNK weights theta (not normalized), to check the KKT conditions
    /ids            (n_q,)   bytes    the query split's sample ids, utf-8 (only when it has ids)
    attrs: every parameter, the class names, the store's and the index's fingerprints, the nnkcli version.

``PredictionFile`` reads such a file back block by block (``nnk compare``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from nnkcli import __version__
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.numerics.scores import TOP


class PredictionWriter:
    """Receives ``ChunkResult``s from ``streaming.evaluate_chunks`` and commits one HDF5 file at the end."""

    def __init__(self, path: str | os.PathLike, ev, opts: ScoringOptions):
        from nnkcli.storage.array_files import ArrayFileWriter

        n, C = int(ev.query.n), int(ev.n_classes)
        (k,) = opts.k_values
        self.k = k
        self.methods = opts.methods
        self.file = ArrayFileWriter(path, kind="predictions")
        with self.file.aborted_on_failure():  # a signal while the datasets are declared leaves nothing
            self.file.create("neighbors", (n, k), np.int64)
            self.file.create("similarities", (n, k), np.float32)
            self.file.create("labels", (n,), np.int64)
            for method in opts.methods:
                self.file.create(f"{method}/scores", (n, C), np.float32)
                self.file.create(f"{method}/top5", (n, TOP), np.int64)
            if "nnk" in opts.methods:
                self.file.create("nnk/weights", (n, k), np.float32)
            self._ids = None
            ids = ev.query.ids
            if ids is not None and n:
                # fixed-width utf-8 bytes: read back in blocks and compared without decoding
                self._ids = np.array([str(i).encode("utf-8") for i in ids])
                self.file.create("ids", (n,), self._ids.dtype)
            self._class_names = list(ev.class_names)
            self.file.check_space()  # before the first query is scored
            self._fingerprints = {
                "train": {
                    "split": ev.train.name,
                    "n": int(ev.train.n),
                    "dim": int(ev.train.dim),
                    "content_sha256": ev.train.content_sha256,
                },
                "query": {
                    "split": ev.query.name,
                    "n": int(ev.query.n),
                    "dim": int(ev.query.dim),
                    "content_sha256": ev.query.content_sha256,
                },
                "index": ev.index_info,
            }

    def write(self, chunk) -> None:
        s = chunk.start
        self.file.write("neighbors", s, chunk.ids)
        self.file.write("similarities", s, chunk.sims.astype(np.float32))
        self.file.write("labels", s, chunk.labels)
        if self._ids is not None:
            self.file.write("ids", s, self._ids[s : s + len(chunk.labels)])
        for method in self.methods:
            mc = chunk.by_method_k[(method, self.k)]
            self.file.write(f"{method}/scores", s, mc.scores.astype(np.float32))
            self.file.write(f"{method}/top5", s, mc.top)
            if method == "nnk":
                self.file.write("nnk/weights", s, mc.theta.astype(np.float32))
        self.file.flush()

    def commit(self, document: dict) -> None:
        self.file.set_attrs(
            {
                "nnk_format": "predictions",
                "format_version": 1,
                "nnkcli_version": __version__,
                "k": self.k,
                "methods": json.dumps(list(self.methods)),
                "parameters": json.dumps(document.get("parameters", {})),
                "fingerprints": json.dumps(self._fingerprints),
                "class_names": json.dumps(self._class_names),
                "store": str(document.get("store", "")),
            }
        )
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


class PredictionFile:
    """A ``classify --out`` file opened for reading in blocks of queries.

    Attributes: ``path``, ``n`` (queries), ``k``, ``methods``, ``class_names`` (None for
    files written before they were recorded), ``has_ids``, ``attrs``.
    """

    def __init__(self, path: str | os.PathLike):
        from nnkcli.storage.array_files import ArrayFileReader

        self.file = ArrayFileReader(path, kind="predictions")
        self.path = self.file.path
        try:
            attrs = self.file.attrs
            self.attrs = attrs
            self.k = int(attrs.get("k", 0))
            self.methods = tuple(attrs.get("methods") or ())
            names = attrs.get("class_names")
            self.class_names = list(names) if isinstance(names, list) else None
            self.n = int(self.file.shape("labels")[0])
            self.has_ids = self.file.has("ids")
        except BaseException:
            self.file.close()
            raise

    def read_block(self, method: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows ``start .. stop``: labels (m,) int64, top-5 classes (m, 5) int64, ids (m,) bytes or None."""
        labels = np.asarray(self.file.read("labels", start, stop), dtype=np.int64)
        top = np.asarray(self.file.read(f"{method}/top5", start, stop), dtype=np.int64)
        ids = self.file.read("ids", start, stop) if self.has_ids else None
        return labels, top, ids

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
