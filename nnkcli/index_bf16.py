"""The bfloat16 matrix product of the certified search (``--search-kernel bf16``): torch's oneDNN path on the CPU.

One of the index modules, and the only one that imports torch (lazily: importing this module
imports nothing heavy). On a CPU with bfloat16 instructions (``avx512_bf16``, ``amx_bf16``)
torch multiplies bfloat16 matrices through oneDNN, accumulating in float32 and rounding the
result to bfloat16, at two to three times its float32 rate. numpy has no bfloat16 product
(ml_dtypes' bfloat16 arrays multiply through a plain loop, not a BLAS kernel).
torch's CPU matmul offers no float32 result for bfloat16 inputs (``mm(..., out_dtype=)`` is
CUDA's), so the result's rounding to bfloat16 is in the bound, its largest term for unit rows.

:func:`nnkcli.index_flat.kernel_search` keeps the best candidates of these products and
proves the exact top k from them (:mod:`nnkcli.numerics.certified`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from nnkcli.numerics.certified import row_norms

#: CPU flags of the bfloat16 dot-product instructions oneDNN uses (AVX-512 BF16; AMX tiles)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The flags of the first processor in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@lru_cache(maxsize=1)
def bf16_unavailable() -> str | None:
    """Why the bfloat16 product cannot run here, or None when it can.

    The CPU flags and torch's presence are checked first, so a CPU without bfloat16 never
    pays for ``import torch``; then torch's own check (oneDNN's bfloat16 support).
    """
    flags = cpu_flags()
    if not any(f in flags for f in BF16_FLAGS):
        return f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)})"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the torch extra)"
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "torch's oneDNN has no bfloat16 support on this CPU"
    return None


def round_bf16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` (float32) rounded to bfloat16, to nearest even: (the bfloat16 bits as uint16, their float32 values).

    Rounding the float32 bits directly (add half of the dropped part, ties to even, clear it)
    costs one pass; the residual ``a - values`` is then exact in float32. Non-finite inputs give
    non-finite norms, which no bound certifies.
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits >> np.uint32(16)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded &= np.uint32(0xFFFF0000)
    high = rounded.view(np.uint16)[..., 1::2] if np.little_endian else rounded.view(np.uint16)[..., ::2]
    return np.ascontiguousarray(high), rounded.view(np.float32)


class Bf16Rows:
    """The rows of a flat index rounded to bfloat16, with the norms the error bound needs.

    Attributes
    ----------
    low : torch.Tensor (n, d) bfloat16
        The rows rounded to nearest (half the float32 index's memory).
    norm, low_norm, res_norm : (n,) float64
        Norms of the float32 rows, of the bfloat16 rows and of the rounding residuals.
    """

    def __init__(self, vectors: np.ndarray, block_rows: int = 16384):
        import torch

        self.torch = torch  # imported here, by the main thread: the searches run on worker threads
        n = int(vectors.shape[0])
        bits = np.empty(vectors.shape, dtype=np.uint16)
        self.norm, self.low_norm, self.res_norm = (np.empty(n) for _ in range(3))
        for j0 in range(0, n, block_rows):  # a block at a time: the float32 temporaries of one block
            x = vectors[j0 : j0 + block_rows]
            j = slice(j0, j0 + len(x))
            bits[j], low = round_bf16(x)
            self.norm[j], self.low_norm[j], self.res_norm[j] = row_norms(x), row_norms(low), row_norms(x - low)
        self.low = torch.from_numpy(bits).view(torch.bfloat16)


class Bf16Queries:
    """A block of queries (m, d) float32 rounded to bfloat16, and their norms (as :class:`Bf16Rows`)."""

    def __init__(self, queries: np.ndarray, rows: Bf16Rows):
        bits, low = round_bf16(queries)
        self.low = rows.torch.from_numpy(bits).view(rows.torch.bfloat16)
        self.norm, self.low_norm, self.res_norm = row_norms(queries), row_norms(low), row_norms(queries - low)


class Bf16Product:
    """``product(j0, j1, out)``: the bfloat16 similarities of the queries with rows j0..j1, into float32 ``out``.

    ``out`` is an (m, j1 - j0) float32 array; the bfloat16 block is kept between calls.
    """

    def __init__(self, rows: Bf16Rows, queries: Bf16Queries, block_rows: int):
        torch = self._torch = rows.torch
        self.rows, self.q = rows, queries
        m = int(queries.low.shape[0])
        self._low = torch.empty((m, block_rows), dtype=torch.bfloat16)

    def __call__(self, j0: int, j1: int, out: np.ndarray) -> None:
        width = j1 - j0
        low = self._low if width == self._low.shape[1] else self._torch.empty_like(self._low[:, :width])
        self._torch.mm(self.q.low, self.rows.low[j0:j1].T, out=low)
        self._torch.from_numpy(out).copy_(low)
