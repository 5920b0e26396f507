"""The bfloat16 matrix product through oneMKL (the ``mkl`` extra): ``cblas_gemm_bf16bf16f32``, float32 results.

One of the index modules, and the only one that loads oneMKL (through ctypes: importing this
module loads nothing). oneMKL multiplies bfloat16 matrices with the CPU's bfloat16
instructions (AVX-512 BF16, AMX tiles) and accumulates and returns float32: no rounding of
the result to bfloat16, so the error bound is the inputs' rounding and a float32 sum
(:func:`nnkcli.numerics.certified.bf16_bound` with ``out_unit`` 2^-24). Loading the library
takes about a millisecond, where ``import torch`` (the other path, :mod:`nnkcli.index_bf16`)
takes about a second. The library comes from the ``mkl`` wheel (it installs ``libmkl_rt``
into the environment's ``lib`` folder) or from the system's library path.

Each call runs on the calling thread (oneMKL's sequential layer): the search's worker threads
each multiply their own block of queries, as they do with numpy's float32 product.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

#: the oneMKL single dynamic library (its runtime dispatch picks the CPU's kernels), newest soname first
LIBRARY_NAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
#: cblas enumerations (mkl_cblas.h) and oneMKL's threading layers (mkl_service.h)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SEQUENTIAL = 1
#: why the product cannot run where no libmkl_rt is found
NOT_INSTALLED = "oneMKL is not installed (the mkl extra)"


def library_path() -> str | None:
    """Where ``libmkl_rt`` lies: the environment's ``lib`` folder (the mkl wheel), else the system's; None: nowhere."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in LIBRARY_NAMES:
            path = Path(prefix) / "lib" / name
            if path.is_file():
                return str(path)
    return ctypes.util.find_library("mkl_rt")


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _gemm():
    """The loaded ``cblas_gemm_bf16bf16f32``, or the reason it cannot be loaded (a str)."""
    path = library_path()
    if path is None:
        return NOT_INSTALLED
    with _lock:
        try:
            lib = ctypes.CDLL(path)
            gemm = lib.cblas_gemm_bf16bf16f32
        except (OSError, AttributeError) as exc:
            return f"oneMKL at {path} has no bfloat16 product ({exc})"
        # sequential: each search thread's call runs on that thread (set before oneMKL's first call; a oneMKL
        # that a numpy built on it already started keeps its layer, and each call is limited to one thread below)
        lib.MKL_Set_Threading_Layer(ctypes.c_int(_SEQUENTIAL))
        lib.MKL_Set_Num_Threads_Local.restype = ctypes.c_int
        lib.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        mkl_int, ptr = ctypes.c_int, ctypes.c_void_p
        gemm.restype = None
        gemm.argtypes = [ctypes.c_int] * 3 + [mkl_int] * 3 + [ctypes.c_float, ptr, mkl_int, ptr, mkl_int]
        gemm.argtypes += [ctypes.c_float, ptr, mkl_int]
        return lib


def mkl_unavailable() -> str | None:
    """Why oneMKL's bfloat16 product cannot run here (not installed, too old), or None when it can."""
    lib = _gemm()
    return lib if isinstance(lib, str) else None


def gemm_bf16(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b.T`` for bfloat16 matrices given as their bits: a (m, d), b (n, d) uint16, out (m, n) float32.

    All three C-contiguous (b may be a slice of rows of a larger array). Products are summed
    in float32. Raises ValueError on shapes or layouts oneMKL would misread.
    """
    lib = _gemm()
    if isinstance(lib, str):
        raise RuntimeError(lib)
    m, d = a.shape
    n = b.shape[0]
    if b.shape[1] != d or out.shape != (m, n):
        raise ValueError(f"gemm_bf16: shapes {a.shape} x {b.shape}.T -> {out.shape}")
    if a.dtype != np.uint16 or b.dtype != np.uint16 or out.dtype != np.float32:
        raise ValueError("gemm_bf16 takes uint16 bfloat16 bits and a float32 result")
    if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("gemm_bf16 takes C-contiguous arrays and a writable result")
    if m == 0 or n == 0:
        return
    if d == 0:
        out[...] = 0.0
        return
    lib.MKL_Set_Num_Threads_Local(1)  # this thread's calls use this thread only (whatever the layer)
    lib.cblas_gemm_bf16bf16f32(
        _ROW_MAJOR, _NO_TRANS, _TRANS, m, n, d, 1.0, a.ctypes.data, d, b.ctypes.data, d, 0.0, out.ctypes.data, n
    )
