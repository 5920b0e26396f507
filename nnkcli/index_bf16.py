"""The bfloat16 matrix product of the certified search (``--search-kernel bf16``): torch's oneDNN path on the CPU.

One of the index modules, and the only one that imports torch (lazily: importing this module
imports nothing heavy). On a CPU with bfloat16 instructions (``avx512_bf16``, ``amx_bf16``)
torch multiplies bfloat16 matrices through oneDNN, accumulating in float32 and rounding the
result to bfloat16, at two to three times its float32 rate. numpy has no bfloat16 product
(ml_dtypes' bfloat16 arrays multiply through a plain loop, not a BLAS kernel).
torch's CPU matmul offers no float32 result for bfloat16 inputs (``mm(..., out_dtype=)`` is
CUDA's), so the result's rounding to bfloat16 is in the bound. It would be its largest term for
unit rows; each query subtracts a shift near its k-th similarity as one more coordinate, so the
rounded products near the top k's boundary are small and so is their rounding.

:func:`nnkcli.index_flat.kernel_search` keeps the best candidates of these products and
proves the exact top k from them (:mod:`nnkcli.numerics.certified`).
"""

from __future__ import annotations

import math
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


def prefetch_torch() -> None:
    """Start importing torch on a background thread, where this CPU has bfloat16 instructions and torch is installed.

    A caller that will likely run the bfloat16 kernel calls this as early as it knows, so that
    the import (about a second) overlaps with reading the store and loading the index; the
    later ``import torch`` waits for it (Python's import lock). Exit waits for it too: a process
    must not end inside an extension module's import.
    """
    import atexit
    import sys
    import threading

    if "torch" in sys.modules or bf16_unlikely() is not None:
        return
    thread = threading.Thread(target=_import_torch, name="nnk-import-torch", daemon=True)
    thread.start()
    atexit.register(thread.join)


def _import_torch() -> None:
    try:
        import torch  # noqa: F401
    except Exception:  # the main thread's own import reports what went wrong
        pass


def bf16_unlikely() -> str | None:
    """Why the bfloat16 product cannot run here, from what is known without importing torch; None: it likely can.

    The CPU flags, then whether torch is installed at all. :func:`bf16_unavailable` also asks
    torch itself.
    """
    import importlib.util

    flags = cpu_flags()
    if not any(f in flags for f in BF16_FLAGS):
        return f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)})"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (the torch extra)"
    return None


@lru_cache(maxsize=1)
def bf16_unavailable() -> str | None:
    """Why the bfloat16 product cannot run here, or None when it can.

    The CPU flags and torch's presence are checked first (:func:`bf16_unlikely`), so a CPU
    without bfloat16 never pays for ``import torch``; then torch's own check (oneDNN's
    bfloat16 support).
    """
    why = bf16_unlikely()
    if why is not None:
        return why
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


#: float32 bytes of the rows rounded at a time (below glibc's largest mmap threshold, 32 MiB)
ROUND_BLOCK_BYTES = 8 * 2**20
#: rows of the sample that places each query's shift and starting threshold (evenly spaced rows of the index):
#: a sixteenth of the rows, at least SHIFT_SAMPLE_MIN (all of a small index), at most SHIFT_SAMPLE_ROWS
SHIFT_SAMPLE_ROWS, SHIFT_SAMPLE_MIN = 8192, 2048
#: the product's inner dimension is padded (zeros) to a multiple of this: oneDNN's AMX kernels take 32 bfloat16
#: values at a time, and ran at half their rate on an inner dimension of 385 or 785 (1,000+ GFLOP/s at 416 or 800)
INNER_MULTIPLE = 32


def inner_dim(d: int) -> int:
    """The product's inner dimension for rows of dimension d: d, the shift's coordinate, zeros to a multiple of 32."""
    return -(-(d + 1) // INNER_MULTIPLE) * INNER_MULTIPLE


class Bf16Rows:
    """The rows of a flat index rounded to bfloat16, with the norms the error bound needs.

    Attributes
    ----------
    low : torch.Tensor (n, inner_dim(d)) bfloat16
        The rows rounded to nearest, then a column of ones (the coordinate that carries each
        query's shift, :class:`Bf16Queries`), then zeros. About half the float32 index's memory.
    norm, low_norm, res_norm : (n,) float64
        Norms of the float32 rows, of the bfloat16 rows and of the rounding residuals.
    maxima : (float, float, float)
        The largest of each, in the order (low_norm, res_norm, norm) of ``bf16_bound``'s row
        arguments: the bound of a row not looked at.
    sample : torch.Tensor (S, inner_dim(d)) bfloat16
        Evenly spaced rows (a sixteenth of them, ``SHIFT_SAMPLE_MIN`` to ``SHIFT_SAMPLE_ROWS``),
        from which each block of queries estimates its shifts (:class:`Bf16Queries`).
    """

    def __init__(self, vectors: np.ndarray, block_rows: int | None = None):
        import torch

        self.torch = torch  # imported here, by the main thread: the searches run on worker threads
        n, d = (int(v) for v in vectors.shape)
        # torch rounds float32 to bfloat16 to nearest even, as round_bf16 does (a test checks the two agree), in one
        # pass on every thread: 0.07 s for 200,000 x 384 where numpy's bit arithmetic took 0.3 s
        low = torch.empty((n, inner_dim(d)), dtype=torch.bfloat16)  # each page written once, below (not zeroed first)
        low[:, :d].copy_(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)))
        low[:, d] = 1.0
        low[:, d + 1 :] = 0.0
        self.low = low
        self.norm, self.low_norm, self.res_norm = (np.empty(n) for _ in range(3))
        # the norms a block at a time (ROUND_BLOCK_BYTES of float32): the allocator then reuses one block's
        # temporaries for the next, where larger ones are fresh pages each time (slow to fault in on some machines)
        block_rows = block_rows or max(256, ROUND_BLOCK_BYTES // (4 * max(d, 1)))
        for j0 in range(0, n, block_rows):
            j = slice(j0, min(n, j0 + block_rows))
            self.norm[j], self.low_norm[j], self.res_norm[j] = rounding_norms(vectors[j], low[j, :d].float().numpy())
        self.maxima = (
            (float(self.low_norm.max()), float(self.res_norm.max()), float(self.norm.max())) if n else (0.0, 0.0, 0.0)
        )
        self.sample = low[:: max(1, n // max(SHIFT_SAMPLE_MIN, min(SHIFT_SAMPLE_ROWS, n // 16)))].contiguous()


def rounding_norms(x: np.ndarray, rounded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Norms (upper bounds) of float32 rows ``x``, of their bfloat16 roundings (as float32) and of the residuals."""
    return row_norms(x), row_norms(rounded), row_norms(x - rounded)


class Bf16Queries:
    """A block of queries (m, d) float32 rounded to bfloat16, their shifts and their norms (as :class:`Bf16Rows`).

    ``low`` (m, inner_dim(d)) bfloat16: the rounded query, ``-shift``, zeros. ``shift`` (m,)
    float64, bfloat16 numbers, and ``start`` (m,) float64, both placed by an estimate of a
    similarity a little below each query's k-th: the bfloat16 product with the S evenly spaced
    rows of :attr:`Bf16Rows.sample` of rank r in the sample, r = lam + 3 sqrt(lam) + 2 for the lam = k S / n
    of the top k the sample holds on average (at most k: with every row in the sample, its k-th,
    the exact place). It exceeds the k-th of all rows only when r of the top k fell in the sample,
    rare by the Poisson tail (where the estimate was the sample's 3 lam-th, 5-14 % of the queries of
    a 1.28 M-row index fell back to float32 at k = 20 and 50, where lam is below 1). ``start`` is that value less three
    times the product's bound, where a search's threshold can begin; ``shift`` two bounds lower
    still, so that the products near the top k's boundary are small positive numbers and their
    rounding to bfloat16 small too. Both are estimates: any shift gives a valid bound
    (:func:`nnkcli.numerics.certified.bf16_bound`), and a start above the k-th only costs that
    query its certificate (it is searched again in float32).
    """

    def __init__(self, queries: np.ndarray, rows: Bf16Rows, k: int):
        from nnkcli.numerics.certified import U_BF16, bf16_bound

        torch = rows.torch
        m, d = (int(v) for v in queries.shape)
        bits = np.zeros((m, inner_dim(d)), dtype=np.uint16)
        bits[:, :d], low = round_bf16(queries)
        self.low = torch.from_numpy(bits).view(torch.bfloat16)
        self.norm, self.low_norm, self.res_norm = rounding_norms(queries, low)
        n = int(rows.low.shape[0])
        size = int(rows.sample.shape[0])
        # the sample holds about lam = k S / n of the query's top k; its r-th largest lies above the k-th of all
        # rows only if r of the top k fell in it: r = lam + 3 sqrt(lam) + 2 makes that rare (Poisson tail < 0.1 %)
        lam = k * size / max(n, 1)
        rank = int(min(k, size, math.ceil(lam + 3.0 * math.sqrt(lam) + 2.0)))
        sims = torch.mm(self.low, rows.sample.T)  # the shift's coordinate is still 0 here
        kth = torch.topk(sims, rank, dim=1).values[:, rank - 1].float().numpy().astype(np.float64)
        width = bf16_bound(d, kth, self.low_norm, self.res_norm, *rows.maxima, self.norm) + U_BF16 * np.abs(kth)
        width = np.where(np.isfinite(width), width, 0.0)
        self.start = kth - 3.0 * width
        shift_bits, shift = round_bf16(np.where(np.isfinite(kth), kth - 5.0 * width, 0.0).astype(np.float32))
        self.shift = shift.astype(np.float64)
        bits[:, d] = shift_bits ^ np.uint16(0x8000)  # -shift: the sign bit flipped (the tensor views ``bits``)


class Bf16Product:
    """``bits(j0, j1)``: the shifted bfloat16 products ``qh . xh - shift`` of the queries with rows j0..j1.

    The bfloat16 block is kept between calls.
    """

    def __init__(self, rows: Bf16Rows, queries: Bf16Queries, block_rows: int):
        torch = self._torch = rows.torch
        self.rows, self.q = rows, queries
        m = int(queries.low.shape[0])
        self._low = torch.empty((m, block_rows), dtype=torch.bfloat16)

    def bits(self, j0: int, j1: int) -> np.ndarray:
        """The products with rows j0..j1 as their bfloat16 bits, int16 (m, j1 - j0): a view of a buffer
        that the next call overwrites."""
        width = j1 - j0
        low = self._low if width == self._low.shape[1] else self._torch.empty_like(self._low[:, :width])
        self._torch.mm(self.q.low, self.rows.low[j0:j1].T, out=low)
        return low.view(self._torch.int16).numpy()
