"""Data for the index tests: clustered feature rows, and an in-memory stand-in for a store split."""

from __future__ import annotations

import hashlib

import numpy as np


class ArraySplit:
    """The part of store.Split that the index needs, over an in-memory array."""

    def __init__(self, x, name="train"):
        self.x = np.asarray(x, dtype=np.float32)
        self.name = name
        self.n, self.dim = self.x.shape
        self.content_sha256 = hashlib.sha256(self.x.tobytes()).hexdigest()

    def iter_chunks(self, rows):
        for s in range(0, self.n, rows):
            yield s, self.x[s : s + rows]

    def read(self, start=0, stop=None):
        return self.x[start:stop]


def clustered(n=2000, d=16, seed=0):
    """(n, d) float32 rows around 20 random centres (so that neighbors are meaningful)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    return (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def saved_index(tmp_path, index_type="flat", n=600):
    """(rows, path of their saved index of ``index_type``) in ``tmp_path``."""
    from nnkcli.index import IndexParams, build_index, save_index

    x = clustered(n=n)
    params = IndexParams(index_type=index_type, nlist=8) if index_type == "ivf" else IndexParams(index_type=index_type)
    idx = build_index(ArraySplit(x), params)
    path = tmp_path / f"{index_type}.faiss"
    save_index(idx, path)
    return x, path
