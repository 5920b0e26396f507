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

``nnk probe --out`` writes the same layout for its one method, ``linear``: ``/labels``, ``/ids``,
``/linear/scores`` (the class probabilities) and ``/linear/top5``, without neighbors and without ``k``.
``PredictionFile`` reads such a file back block by block (``nnk compare``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from nnkcli import __version__
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.numerics.scores import TOP

#: the methods a prediction file may hold: classify's two, and the linear probe's
METHODS = ("nnk", "knn", "linear")
#: classes of a prediction file without class names (counted from its largest label), at most
MAX_UNNAMED_CLASSES = 2**24


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


def write_linear_predictions(
    path: str | os.PathLike,
    document: dict,
    labels: np.ndarray,
    probabilities: np.ndarray,
    top: np.ndarray,
    ids: list[str] | None,
    class_names: list[str],
) -> None:
    """``nnk probe --out``: one method, ``linear``, in ``classify --out``'s layout, committed atomically.

    ``labels`` (n,) int64, ``probabilities`` (n, C) float32 over every class of the store,
    ``top`` (n, 5) int64 classes best first (-1 = none), ``ids`` the query split's sample ids or None.
    """
    from nnkcli.storage.array_files import ArrayFileWriter

    n, C = probabilities.shape
    out = ArrayFileWriter(path, kind="predictions")
    with out.aborted_on_failure():
        out.create("labels", (n,), np.int64)
        out.create("linear/scores", (n, C), np.float32)
        out.create("linear/top5", (n, TOP), np.int64)
        encoded = np.array([str(i).encode("utf-8") for i in ids]) if ids is not None and n else None
        if encoded is not None:
            out.create("ids", (n,), encoded.dtype)
        out.check_space()
        out.write("labels", 0, labels)
        out.write("linear/scores", 0, probabilities)
        out.write("linear/top5", 0, top)
        if encoded is not None:
            out.write("ids", 0, encoded)
        out.set_attrs(
            {
                "nnk_format": "predictions",
                "format_version": 1,
                "nnkcli_version": __version__,
                "methods": json.dumps(["linear"]),
                "parameters": json.dumps({**document.get("parameters", {}), "c": document.get("chosen_c")}),
                "fingerprints": json.dumps(document.get("fingerprints", {})),
                "class_names": json.dumps(list(class_names)),
                "store": str(document.get("store", "")),
            }
        )
    out.commit()


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
            self.attrs = self.file.attrs
            self._check()
        except BaseException:
            self.file.close()
            raise

    def _check(self) -> None:
        """Every attribute and dataset ``read_block`` uses, by type and shape, before any row is read.

        The declared rows are checked against the data the file holds (a crafted file may
        declare 2**40 queries and hold none), so a comparison is bounded by the file's size.
        """
        attrs, damaged = self.attrs, self.file.damaged
        methods = attrs.get("methods")
        if not isinstance(methods, list) or not methods or not set(methods) <= set(METHODS):
            raise damaged(f"attribute 'methods' is {_short(methods)}, expected a list of 'nnk' and 'knn' (or 'linear')")
        self.methods = tuple(dict.fromkeys(methods))
        k = attrs.get("k")
        if self.methods == ("linear",) and k is None:
            self.k = None  # a linear probe has no neighbors
        elif not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise damaged(f"attribute 'k' is {_short(k)}, expected an integer >= 1")
        else:
            self.k = k
        names = attrs.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
            raise damaged(f"attribute 'class_names' is {_short(names)}, expected a list of strings")
        self.class_names = names
        self.file.require("labels", (None,), kinds="iu")
        self.n = int(self.file.shape("labels")[0])
        for method in self.methods:
            self.file.require(f"{method}/top5", (self.n, TOP), kinds="iu")
        self.has_ids = self.file.has("ids")
        if self.has_ids:
            self.file.require("ids", (self.n,), kinds="S")

    def counted_classes(self, block_rows: int = 65_536) -> list[str]:
        """``"0"`` .. ``"C-1"``, C from the largest label: the classes of a file without class names."""
        n_classes = 0
        for start in range(0, self.n, block_rows):
            stop = min(self.n, start + block_rows)
            n_classes = max(n_classes, int(self.file.read("labels", start, stop).max(initial=-1)) + 1)
        if n_classes > MAX_UNNAMED_CLASSES:  # per-class counts are dense arrays of this size
            raise self.file.damaged(f"labels up to {n_classes - 1} without class names")
        return [str(c) for c in range(n_classes)]

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


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
