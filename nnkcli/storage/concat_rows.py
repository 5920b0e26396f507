"""Several row sources of one width taken as one, never copied whole: :class:`ConcatRows`.

A sharded flat index is searched over its mapped shards' rows as one array
(:mod:`nnkcli.evaluation.sharded_search`), and the files of a multi-file parquet import are
stored as one split (:mod:`nnkcli.extract.tabular`): both read slices of the concatenation, the
search gathers rows by id too.
"""

from __future__ import annotations

import numpy as np


class ConcatRows:
    """Row sources (each ``(n_i, d)``, one d) seen as one ``(sum n_i, d)`` array of their common dtype.

    A part is anything with ``shape``, ``dtype`` and contiguous row slices (an ndarray, a mapped
    file's rows, a lazily parsed file); gathers (:meth:`take`, an integer key, a strided slice) also
    need the parts to take integer arrays. A contiguous slice inside one part is that part's own
    slice (a view of an ndarray); one that spans parts is their slices concatenated.
    """

    ndim = 2

    def __init__(self, parts: list):
        dims = {int(p.shape[1]) for p in parts}
        if len(dims) > 1:
            raise ValueError(f"row sources of different widths: {sorted(dims)}")
        self.parts = parts
        self.dtype = np.result_type(*[p.dtype for p in parts]) if parts else np.dtype(np.float32)
        self.starts = np.cumsum([0, *(len(p) for p in parts)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), dims.pop() if dims else 0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            return self.take(np.asarray(key))
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            return self.take(np.arange(start, stop, step, dtype=np.int64))
        blocks = []
        for i, part in enumerate(self.parts):
            lo, hi = max(start, int(self.starts[i])), min(stop, int(self.starts[i + 1]))
            if lo < hi:
                blocks.append(np.asarray(part[lo - self.starts[i] : hi - self.starts[i]], dtype=self.dtype))
        if not blocks:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The rows of global ``ids`` (any shape, all in range): ``ids.shape + (d,)``."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((flat.size, self.shape[1]), dtype=self.dtype)
        if len(self.parts) == 1:
            out[:] = self.parts[0][flat]
        elif flat.size:
            part = np.searchsorted(self.starts, flat, side="right") - 1
            for i in np.unique(part).tolist():
                at = np.flatnonzero(part == i)
                out[at] = self.parts[i][flat[at] - self.starts[i]]
        return out.reshape(*np.shape(ids), self.shape[1])

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)
