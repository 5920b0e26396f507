"""The bfloat16 matrix product of the certified search (``--search-kernel bf16``), from oneMKL or torch.

One of the index modules. On a CPU with bfloat16 instructions (``avx512_bf16``, ``amx_bf16``)
two well-kept libraries multiply bfloat16 matrices at several times their float32 rate:

mkl    oneMKL's ``cblas_gemm_bf16bf16f32`` (the ``mkl`` extra; :mod:`nnkcli.index_mkl` loads it
       in about a millisecond). It returns the float32 sum, so the bound is the inputs' rounding.
torch  torch's oneDNN path (the ``torch`` extra; this module is torch's only importer here,
       lazily). Importing torch takes about a second, and torch's CPU product rounds its result
       to bfloat16 (``mm(..., out_dtype=)`` is CUDA's): that rounding would be the bound's largest
       term for unit rows, so each query subtracts a shift near its k-th similarity as one more
       coordinate, and the products near the top k's boundary are small, their rounding too.

numpy has no bfloat16 product (ml_dtypes' bfloat16 arrays multiply through a plain loop, not
a BLAS kernel). The library that runs is oneMKL on Intel CPUs and torch on others (oneMKL's
fast paths are Intel's), either where the other is missing; ``NNKCLI_BF16_LIBRARY=mkl|torch``
picks one. :func:`nnkcli.index_kernel.kernel_search` keeps the best candidates of these
products and proves the exact top k from them (:mod:`nnkcli.numerics.certified`).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from nnkcli import index_mkl  # loads nothing until its product is asked for
from nnkcli.numerics.certified import U_BF16, U_FP32, row_norms

#: CPU flags of the bfloat16 dot-product instructions both libraries use (AVX-512 BF16; AMX tiles)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: the libraries of the bfloat16 product, and the variable that picks one
LIBRARIES = ("mkl", "torch")
LIBRARY_VARIABLE = "NNKCLI_BF16_LIBRARY"


def cpu_info() -> tuple[str, set[str]]:
    """(vendor, flags) of the first processor in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    vendor, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    return vendor, flags or set()


def cpu_flags() -> set[str]:
    """The flags of the first processor in /proc/cpuinfo (empty where there is none: not Linux)."""
    return cpu_info()[1]


def library_order() -> tuple[str, ...]:
    """The libraries to try, in order: ``NNKCLI_BF16_LIBRARY`` alone where set, else oneMKL first on Intel CPUs.

    Raises ValueError for a value other than mkl or torch.
    """
    chosen = os.environ.get(LIBRARY_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in LIBRARIES:
            raise ValueError(f"{LIBRARY_VARIABLE}={chosen!r}: choose {' or '.join(LIBRARIES)}")
        return (chosen,)
    return LIBRARIES if cpu_info()[0] == "GenuineIntel" else LIBRARIES[::-1]


def _installed(library: str) -> bool:
    """Whether ``library`` is installed, known without loading it."""
    import importlib.util

    if library == "mkl":
        from nnkcli.index_mkl import library_path

        return library_path() is not None
    return importlib.util.find_spec("torch") is not None


def likely_library() -> str | None:
    """The library the bfloat16 product would likely use, from what is known without loading any; None: neither."""
    try:
        order = library_order()
    except ValueError:
        return None
    return next((lib for lib in order if _installed(lib)), None)


def prefetch_torch() -> None:
    """Start importing torch on a background thread, where the bfloat16 product will likely come from torch.

    A caller that will likely run the bfloat16 kernel calls this as early as it knows, so that
    the import (about a second) overlaps with reading the store and loading the index; the
    later ``import torch`` waits for it (Python's import lock). Exit waits for it too: a process
    must not end inside an extension module's import. Nothing to do where oneMKL serves.
    """
    import atexit
    import sys
    import threading

    if "torch" in sys.modules or bf16_unlikely() is not None or likely_library() != "torch":
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
    """Why the bfloat16 product cannot run here, from what is known without loading a library; None: it likely can.

    The CPU flags, then whether oneMKL or torch is installed at all (and ``NNKCLI_BF16_LIBRARY``
    valid). :func:`bf16_unavailable` also loads the library and asks it.
    """
    flags = cpu_flags()
    if not any(f in flags for f in BF16_FLAGS):
        return f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)})"
    try:
        order = library_order()
    except ValueError as exc:
        return str(exc)
    if not any(_installed(lib) for lib in order):
        return " and ".join(_MISSING[lib] for lib in order)
    return None


_MISSING = {"mkl": index_mkl.NOT_INSTALLED, "torch": "torch is not installed (the torch extra)"}


@lru_cache(maxsize=1)
def _product_library():
    """The loaded library (a :class:`_MklProduct` or :class:`_TorchProduct`), or why none can run (a str)."""
    why = bf16_unlikely()
    if why is not None:
        return why
    reasons = []
    for lib in library_order():
        if lib == "mkl":
            from nnkcli.index_mkl import mkl_unavailable

            reason = mkl_unavailable()
            if reason is None:
                return _MklProduct()
        else:
            reason = _torch_unavailable()
            if reason is None:
                return _TorchProduct()
        reasons.append(reason)
    return "; ".join(reasons)


def _torch_unavailable() -> str | None:
    try:
        import torch
    except ImportError:
        return _MISSING["torch"]
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "torch's oneDNN has no bfloat16 support on this CPU"
    return None


def bf16_unavailable() -> str | None:
    """Why the bfloat16 product cannot run here, or None when it can.

    The CPU flags and the libraries' presence are checked first (:func:`bf16_unlikely`), so a
    CPU without bfloat16 never loads one; then the library itself (oneMKL's bfloat16 product;
    torch's oneDNN bfloat16 support). The answer is kept (``bf16_unavailable.cache_clear()``
    forgets it).
    """
    lib = _product_library()
    return lib if isinstance(lib, str) else None


bf16_unavailable.cache_clear = _product_library.cache_clear  # type: ignore[attr-defined]


def product_library():
    """The library that multiplies (``.name`` "mkl" or "torch"); call only where :func:`bf16_unavailable` is None."""
    lib = _product_library()
    if isinstance(lib, str):
        raise RuntimeError(lib)
    return lib


#: buffers at least this large are mapped directly, without numpy's huge-page advice
FRESH_MAP_BYTES = 32 * 2**20


def fresh_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array; a large one is its own private anonymous mapping, freed with the last array viewing it.

    numpy advises transparent huge pages for large arrays (unless ``NUMPY_MADVISE_HUGEPAGE=0``);
    where the kernel's THP defrag setting is ``madvise``, faulting such pages in may compact
    memory synchronously. On the test VM a 154 MB bfloat16 copy of an index took 1.2-1.9 s to
    fill in some runs, 0.1 s in its own plain mapping. The bfloat16 copy is large and written
    once, so it is mapped here without the advice, whoever imported numpy.
    """
    import mmap

    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size < FRESH_MAP_BYTES or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class _MklProduct:
    """oneMKL's product: bfloat16 bits in numpy uint16 arrays, float32 results, no shift."""

    name = "mkl"
    out_unit = U_FP32  # the result is the float32 sum (its rounding is in the sum's term; this is a margin)
    shifted = False

    def inner(self, d: int) -> int:
        return d

    def empty_rows(self, n: int, inner: int):
        return fresh_array((n, inner), np.uint16)

    def round_rows(self, low, j: slice, x: np.ndarray) -> np.ndarray:
        low[j], rounded = round_bf16(x)
        return rounded

    def from_bits(self, bits: np.ndarray):
        return bits

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def scratch(self, m: int, width: int):
        return None

    def mm(self, a, b, out: np.ndarray, scratch=None) -> None:
        from nnkcli.index_mkl import gemm_bf16

        gemm_bf16(a, b, out)


class _TorchProduct:
    """torch's product: bfloat16 tensors (the inner dimension padded, a shift column), bfloat16 results."""

    name = "torch"
    out_unit = U_BF16
    shifted = True

    def __init__(self):
        import torch

        self.torch = torch  # imported here, by the main thread: the searches run on worker threads

    def inner(self, d: int) -> int:
        """d, the shift's coordinate, zeros to a multiple of 32 (``INNER_MULTIPLE``)."""
        return -(-(d + 1) // INNER_MULTIPLE) * INNER_MULTIPLE

    def empty_rows(self, n: int, inner: int):
        return self.torch.from_numpy(fresh_array((n, inner), np.int16)).view(self.torch.bfloat16)

    def round_rows(self, low, j: slice, x: np.ndarray) -> np.ndarray:
        # torch rounds float32 to bfloat16 to nearest even, as round_bf16 does (a test checks the two agree)
        d = x.shape[1]
        low[j, :d].copy_(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return low[j, :d].float().numpy()

    def from_bits(self, bits: np.ndarray):
        return self.torch.from_numpy(bits).view(self.torch.bfloat16)

    def contiguous(self, a):
        return a.contiguous()

    def scratch(self, m: int, width: int):
        return self.torch.empty((m, width), dtype=self.torch.bfloat16)

    def mm(self, a, b, out: np.ndarray, scratch=None) -> None:
        torch = self.torch
        m, width = out.shape
        low = scratch if scratch is not None and tuple(scratch.shape) == (m, width) else self.scratch(m, width)
        torch.mm(a, b.T, out=low)
        torch.from_numpy(out).copy_(low)  # bfloat16 to float32: exact


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
#: torch's product's inner dimension is padded (zeros) to a multiple of this: oneDNN's AMX kernels take 32
#: bfloat16 values at a time, and ran at half their rate on an inner dimension of 385 or 785 (1,000+ GFLOP/s at
#: 416 or 800); oneMKL's ran as fast at 384 and 784 as at 800
INNER_MULTIPLE = 32
#: float32 products of the queries with the sample computed at a time
SAMPLE_BLOCK_ELEMENTS = 2**22


class Bf16Rows:
    """The rows of a flat index rounded to bfloat16, with the norms the error bound needs.

    Attributes
    ----------
    lib : the library that multiplies (:func:`product_library`)
    low : (n, inner) bfloat16 (numpy uint16 bits for oneMKL, a torch tensor for torch)
        The rows rounded to nearest; for torch then a column of ones (the coordinate that
        carries each query's shift, :class:`Bf16Queries`) and zeros. About half the float32
        index's memory.
    norm, low_norm, res_norm : (n,) float64
        Norms of the float32 rows, of the bfloat16 rows and of the rounding residuals.
    maxima : (float, float, float)
        The largest of each, in the order (low_norm, res_norm, norm) of ``bf16_bound``'s row
        arguments: the bound of a row not looked at.
    sample : (S, inner) bfloat16
        Evenly spaced rows (a sixteenth of them, ``SHIFT_SAMPLE_MIN`` to ``SHIFT_SAMPLE_ROWS``),
        from which each block of queries estimates its k-th similarity (:class:`Bf16Queries`).

    ``stream=True`` keeps no copy (``low`` is None): each search rounds every block of rows as
    it multiplies it (:meth:`block`), so the memory is the norms (24 bytes a row) and one block
    per search. A sharded index is searched so: its shards stay in their mapped files.
    """

    def __init__(self, vectors: np.ndarray, block_rows: int | None = None, threads: int = 1, stream: bool = False):
        self.lib = lib = product_library()
        self.vectors = vectors
        n, d = (int(v) for v in vectors.shape)
        self.n, self.d = n, d
        self.low = None if stream else self.empty(n)
        self.norm, self.low_norm, self.res_norm = (np.empty(n) for _ in range(3))
        # a block at a time (ROUND_BLOCK_BYTES of float32): the allocator then reuses one block's temporaries for the
        # next, where larger ones are fresh pages each time (slow to fault in on some machines); on ``threads``
        # threads (numpy and torch release the GIL; each block writes its own rows)
        block_rows = block_rows or max(256, ROUND_BLOCK_BYTES // (4 * max(d, 1)))

        def round_block(j0: int) -> None:
            j = slice(j0, min(n, j0 + block_rows))
            if self.low is None:
                rounded = round_bf16(vectors[j])[1]  # the library's rounding (a test checks torch's is the same)
            else:
                rounded = lib.round_rows(self.low, j, vectors[j])
            self.norm[j], self.low_norm[j], self.res_norm[j] = rounding_norms(vectors[j], rounded)

        starts = range(0, n, block_rows)
        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(starts)), thread_name_prefix="nnk-round") as pool:
                list(pool.map(round_block, starts))
        else:
            for j0 in starts:
                round_block(j0)
        self.maxima = (
            (float(self.low_norm.max()), float(self.res_norm.max()), float(self.norm.max())) if n else (0.0, 0.0, 0.0)
        )
        step = max(1, n // max(SHIFT_SAMPLE_MIN, min(SHIFT_SAMPLE_ROWS, n // 16)))
        if self.low is not None:
            self.sample = lib.contiguous(self.low[::step])
        else:
            self.sample = self.empty(len(range(0, n, step)))
            lib.round_rows(self.sample, slice(None), vectors[::step])

    def empty(self, rows: int):
        """``rows`` rows for bfloat16 copies (torch's with the shift's column of ones and the zero padding set)."""
        low = self.lib.empty_rows(rows, self.lib.inner(self.d))
        if self.lib.shifted:
            low[:, self.d] = 1.0
            low[:, self.d + 1 :] = 0.0
        return low

    def block(self, j0: int, j1: int, scratch):
        """Rows j0..j1 rounded: a view of the copy, or (streamed) rounded now into ``scratch`` (from :meth:`empty`)."""
        if self.low is not None:
            return self.low[j0:j1]
        self.lib.round_rows(scratch, slice(0, j1 - j0), self.vectors[j0:j1])
        return scratch[: j1 - j0]


def rounding_norms(x: np.ndarray, rounded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Norms (upper bounds) of float32 rows ``x``, of their bfloat16 roundings (as float32) and of the residuals."""
    return row_norms(x), row_norms(rounded), row_norms(x - rounded)


class Bf16Queries:
    """A block of queries (m, d) float32 rounded to bfloat16, their shifts and their norms (as :class:`Bf16Rows`).

    ``low`` (m, inner) bfloat16: the rounded query (for torch then ``-shift`` and zeros).
    ``start`` (m,) float64: an estimate of a similarity a little below each query's k-th, where
    a search's threshold can begin: the product with the S evenly spaced rows of
    :attr:`Bf16Rows.sample` of rank r in the sample, r = lam + 3 sqrt(lam) + 2 for the lam = k S / n
    of the top k the sample holds on average (at most k: with every row in the sample, its k-th,
    the exact place), less three times the product's bound. It exceeds the k-th of all rows only
    when r of the top k fell in the sample, rare by the Poisson tail (where the estimate was the
    sample's 3 lam-th, 5-14 % of the queries of a 1.28 M-row index fell back to float32 at k = 20
    and 50, where lam is below 1). ``shift`` (m,) float64, bfloat16 numbers: for torch's product
    two bounds below ``start``, so that the products near the top k's boundary are small positive
    numbers and their rounding to bfloat16 small too; 0 for oneMKL's (no output rounding). Both
    are estimates: any shift gives a valid bound (:func:`nnkcli.numerics.certified.bf16_bound`),
    and a start above the k-th only costs that query its certificate (it is searched again in float32).
    """

    def __init__(self, queries: np.ndarray, rows: Bf16Rows, k: int):
        from nnkcli.numerics.certified import bf16_bound

        lib = rows.lib
        m, d = (int(v) for v in queries.shape)
        bits = np.zeros((m, lib.inner(d)), dtype=np.uint16)
        bits[:, :d], low = round_bf16(queries)
        self.low = lib.from_bits(bits)
        self.norm, self.low_norm, self.res_norm = rounding_norms(queries, low)
        n = rows.n
        size = int(rows.sample.shape[0])
        # the sample holds about lam = k S / n of the query's top k; its r-th largest lies above the k-th of all
        # rows only if r of the top k fell in it: r = lam + 3 sqrt(lam) + 2 makes that rare (Poisson tail < 0.1 %)
        lam = k * size / max(n, 1)
        rank = int(min(k, size, math.ceil(lam + 3.0 * math.sqrt(lam) + 2.0)))
        kth = np.empty(m)
        step = max(1, SAMPLE_BLOCK_ELEMENTS // max(size, 1))
        sims = np.empty((min(m, step), size), dtype=np.float32)
        for i0 in range(0, m, step):  # the shift's coordinate is still 0 here
            i1 = min(m, i0 + step)
            part = sims[: i1 - i0]
            lib.mm(self.low[i0:i1], rows.sample, part)
            kth[i0:i1] = np.partition(part, size - rank, axis=1)[:, size - rank]
        width = bf16_bound(d, kth, self.low_norm, self.res_norm, *rows.maxima, self.norm, out_unit=lib.out_unit)
        width = width + U_BF16 * np.abs(kth)  # a margin for the estimate itself
        width = np.where(np.isfinite(width), width, 0.0)
        self.start = kth - 3.0 * width
        self.shift = np.zeros(m)
        if lib.shifted:
            shift_bits, shift = round_bf16(np.where(np.isfinite(kth), kth - 5.0 * width, 0.0).astype(np.float32))
            self.shift = shift.astype(np.float64)
            bits[:, d] = shift_bits ^ np.uint16(0x8000)  # -shift: the sign bit flipped (``low`` views ``bits``)


class Bf16Product:
    """``values(j0, j1)``: the products ``qh . xh - shift`` of the queries with rows j0..j1, float32.

    One float32 block (and torch's bfloat16 one) is kept between calls.
    """

    def __init__(self, rows: Bf16Rows, queries: Bf16Queries, block_rows: int):
        self.rows, self.q = rows, queries
        m = int(queries.low.shape[0])
        self._out = np.empty(m * block_rows, dtype=np.float32)
        self._scratch = rows.lib.scratch(m, block_rows)
        self._rows_scratch = rows.empty(block_rows) if rows.low is None else None  # streamed rows: one block
        self._m = m

    def values(self, j0: int, j1: int) -> np.ndarray:
        """The products with rows j0..j1, (m, j1 - j0) float32: a view of a buffer that the next call overwrites."""
        out = self._out[: self._m * (j1 - j0)].reshape(self._m, j1 - j0)
        self.rows.lib.mm(self.q.low, self.rows.block(j0, j1, self._rows_scratch), out, self._scratch)
        return out
