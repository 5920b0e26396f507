"""NNK of the cosine kernel, one query at a time in compiled code (the one owner of numba).

The batched numpy engine (``nnkcli.numerics.active_set``) pays about a millisecond of
Python per step whatever the batch, so it needs the whole float32 kernel block of every
query (``k^2 d`` multiply-adds, the largest cost at d = 784) and a float64 polish to stay
ahead. Compiled, one query at a time, the classic Lawson–Hanson method needs neither:

- the gradient ``w = g - G theta`` is ``g - 1/2 (sum(theta) + X v)`` with ``v = X_P^T theta_P``
  (``(t + k) d`` multiply-adds, never ``t k d``); the entering variable is chosen from
  float32 products ``X v`` (no widening, half the bytes of a float64 pass), each with a
  rigorous bound on its error (below): a variable enters where its
  estimate less the bound still exceeds the entry threshold, and where no estimate is that
  clear, every gradient that may be positive is computed again in float64 and decides;
- only the support's rows are widened to float64 (once, as a variable enters), and the
  float64 kernel ``G_PP`` among them is computed from those (``t d`` per entry);
- the active set is held as the Cholesky factor of ``G_PP``, extended by one row per
  entering variable (``O(t^2)``) and refactored from the first changed row when variables
  leave (``t`` is the support size, ~10-30);
- after a step, the runners-up of the last pass (``RUNNERS_UP``) are tried first, each by
  one float64 product: any variable whose gradient is positive may enter (Lawson–Hanson's
  convergence needs no more), so a new pass over all k rows is made only when none is;
- across k (a sweep) a new neighbor costs one float32 product (``d``) to check, and the
  method simply continues from the previous k's optimum.

The error bound of the float32 estimates. For a row x the estimate ``s32`` of
``s64 = fl64(<x, v>)`` (computed against ``v32``, v rounded to float32) satisfies, for any
summation order, with fused multiply-adds or not, u = 2^-24::

    |s32 - s64| <= (gamma_d(u) (1 + u) + u + gamma_d(2^-53)) ||x|| ||v|| <= gamma_{d+2}(u) ||x|| ||v||

(the accumulation, v's rounding, the float64 reference's own error; Cauchy–Schwarz turns the
componentwise sums into norms), plus ``d 2^-149`` per term for gradual underflow. The
kernel's ``err[j]`` is twice that bound, halved for w, plus 1e-14 of the magnitudes for the
float64 steps around it; ||x|| is bounded from the float32 sum of squares and ||v|| from its
float64 one. A variable enters from a pass when its estimate less ``err`` exceeds the entry
threshold; when the largest estimate is not that clear, every estimate that may be positive
(estimate plus ``err`` above 0) is recomputed in float64 and the choice is made on those
values; a k ends only when no float64 value or bound allows an entry.

Every certified quantity is float64 (the float32 features are widened as read, and a product
of two float32 numbers is exact in float64), and every query stops on the engine's own rule:
no variable outside the support has a gradient above ``_ENTER * tol * max|g|`` (a float64
value, or a float32 estimate whose bound puts it at or below 0) and the support's equations
hold to ``_EXACT * tol * max|g|``; the reported ``kkt_residual`` is computed from those
float64 values. A query the method cannot finish (iteration limit, a dependent variable
whose gradient still says it should enter, a non-finite value) is flagged; the caller
solves it with the numpy path.

Each query's numbers depend only on its own neighbors and k values, so results are
bit-identical whatever the chunking and the thread count (the kernel releases the GIL;
the pipeline's own threads run chunks side by side). The dot products are vectorised by
the compiler (reassociated sums), so bits may differ from another CPU's, as BLAS's do.

numba is optional (``pip install 'nnkcli[fast]'``); without it, or with
``NNKCLI_COMPILED=0`` in the environment, ``available()`` is False and the numpy path runs.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import threading

import numpy as np

__all__ = ["available", "solve_cosine_path", "warm_up"]

logger = logging.getLogger("nnkcli")

_LOCK = threading.Lock()
_KERNEL: list = []  # [kernel] once built, [None] when numba is missing or failed to build
_WARMING = None  # the warm-up thread, once started


def available() -> bool:
    """Whether the compiled kernel can run here (builds it on the first call)."""
    return available_by_environment() and _kernel() is not None


#: the interpreter's switch interval while the warm-up runs (the default is 5 ms)
WARM_UP_SWITCH_INTERVAL = 1e-4


def warm_up() -> None:
    """Load the kernel (numba's import and its cached machine code, ~1 s) on a background thread.

    Called where a run will need NNK, before its index is read, so the load overlaps
    that work instead of delaying the first chunk; idempotent, and harmless where numba
    is missing (the first solve then simply finds the numpy path).

    numba's load is Python code that holds the GIL, and the index load beside it takes
    the GIL back after every read (dozens of times): at the default 5 ms switch interval
    each of those waits cost up to 5 ms, and a 307 MB index loaded in 0.9-1.0 s instead
    of 0.6. While the warm-up runs, the switch interval is ``WARM_UP_SWITCH_INTERVAL``
    (0.7-0.8 s); the previous one is restored when it ends, unless someone changed it since.
    """
    global _WARMING
    with _LOCK:
        if _KERNEL or _WARMING is not None or not available_by_environment():
            return
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, WARM_UP_SWITCH_INTERVAL))
        ours = sys.getswitchinterval()  # as the interpreter holds it (whole microseconds)
        _WARMING = threading.Thread(target=_load_and_run, args=(previous, ours), name="nnkcli-compiled-warm-up")
        _WARMING.start()


def _load_and_run(previous: float, ours: float) -> None:
    try:
        kernel = _kernel()
        if kernel is not None:  # one tiny call: numba loads the cached code on a function's first call
            solve_cosine_path(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2)), [2], 1e-8, 1e-2, 1e-2, 1e-12, 4)
    finally:
        if sys.getswitchinterval() == ours:  # not changed by anyone since warm_up set it
            sys.setswitchinterval(previous)


#: what numba's runtime (LLVM and its modules) adds to a process's peak memory, measured
#: (~103 MiB on Linux x86-64, numba 0.68); counted in the scoring chunks' memory budget
RUNTIME_BYTES = 104 * 2**20


def expected() -> bool:
    """Whether the compiled engine will run, without loading it (for sizing, before the load ends)."""
    if not available_by_environment():
        return False
    if _KERNEL:
        return _KERNEL[0] is not None
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def available_by_environment() -> bool:
    """False where ``NNKCLI_COMPILED`` turns the compiled path off."""
    return os.environ.get("NNKCLI_COMPILED", "1").strip().lower() not in ("0", "false", "no", "off")


def _kernel():
    with _LOCK:
        if not _KERNEL:
            try:
                from nnkcli.numerics.compiled_kernel import kernel

                _KERNEL.append(kernel)
                # numba's runtime leaves a large heap of objects, which the interpreter's last
                # collections walk at exit: a process that had loaded the kernel took 3.4 s to
                # exit on a busy 2-core Xeon, 0.65 s with them frozen (left to the operating
                # system), against 0.2 s without numba -- more than the NNK solves of a few
                # thousand queries. atexit runs this after the handlers registered later and
                # before the interpreter's final collection.
                atexit.register(gc.freeze)
            except ImportError:  # numba is optional
                _KERNEL.append(None)
            except Exception as exc:  # a numba that cannot build or cache here: numpy it is
                logger.debug("compiled NNK kernel unavailable (%s: %s); using the numpy path", type(exc).__name__, exc)
                _KERNEL.append(None)
        return _KERNEL[0]


def solve_cosine_path(X, g, k_values, tol, enter, exact, dependent, max_iter, row_cap=256):
    """Run the kernel on a batch; see the module docstring.

    Parameters
    ----------
    X : ndarray (B, K, d), float32 or float64, C-contiguous
        Neighbors (unit rows, zeros where a neighbor is missing), nearest first.
    g : ndarray (B, K) float64
        ``(1 + <q, x_j>) / 2``.
    k_values : sequence of int, increasing within 1..K
    tol : float
        The certificate's tolerance.
    enter, exact, dependent : float
        The engine's constants (``_ENTER``, ``_EXACT``, ``_DEPENDENT`` of ``active_set``).
    max_iter : int
        Steps allowed per query and k.
    row_cap : int
        The largest support (the widened rows and their float64 kernel kept per query); a
        query whose support would be larger is flagged.

    Returns
    -------
    (thetas, residual, iterations, objective, failed): ``thetas`` a list of (B, k_i)
    float64 arrays, the others (len(k_values), B) arrays (float64, int64, float64, bool);
    None where the kernel itself failed (it is then turned off for the process, with a
    warning, and the caller uses the numpy engine).
    """
    kernel = _kernel()
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    g = np.ascontiguousarray(g, dtype=np.float64)
    ks = np.asarray(k_values, dtype=np.int64)
    B = g.shape[0]
    offsets = np.concatenate([[0], np.cumsum(ks)]).astype(np.int64)
    flat = np.zeros((B, int(offsets[-1])))
    nk = ks.size
    residual = np.full((nk, B), np.inf)
    iterations = np.zeros((nk, B), dtype=np.int64)
    objective = np.zeros((nk, B))
    failed = np.zeros((nk, B), dtype=np.bool_)
    if B:
        try:
            kernel(
                X,
                g,
                ks,
                float(tol),
                float(enter),
                float(exact),
                float(dependent),
                int(max_iter),
                int(row_cap),
                flat,
                offsets,
                residual,
                iterations,
                objective,
                failed,
            )
        except Exception as exc:  # a numba that cannot compile or load here: numpy from now on
            logger.warning(
                "the compiled NNK kernel failed (%s: %s); using the numpy engine",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            with _LOCK:
                _KERNEL[:] = [None]
            return None
    thetas = [np.ascontiguousarray(flat[:, offsets[i] : offsets[i + 1]]) for i in range(nk)]
    return thetas, residual, iterations, objective, failed
