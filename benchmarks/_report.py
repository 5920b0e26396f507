"""What every benchmark's ``--json PATH`` writes: the measurements and the machine that made them.

A number without its machine is not worth keeping: the same script runs 2x faster on a CPU
with a faster float32 GEMM, and faiss's bundled OpenBLAS falls back to a generic kernel on a
processor it does not know. So each JSON file carries the CPU (model name, family/model
numbers, the instruction-set flags that change BLAS speed), the cores this process may use,
numpy's and its BLAS's versions, the date and the command line. ``docs/gen_performance.py``
groups the files by :func:`machine_kind` and renders docs/performance.md from them.

Layout of a file (``schema_version`` 1)::

    {"schema_version": 1, "benchmark": "bench_solver", "command": "python benchmarks/bench_solver.py --quick",
     "date": "2026-12-03T10:00:00+00:00", "machine": {...}, "measurements": {...}}
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
# the x86 flags that decide which BLAS kernels run (and ARM's vector units)
FLAGS_OF_INTEREST = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _blas() -> list[dict]:
    """numpy's (and any other loaded) BLAS: library, version, the kernel it picked, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def machine() -> dict:
    """The machine running this process, as recorded beside every measurement."""
    import numpy as np

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count()
    try:
        import nnkcli

        version = nnkcli.__version__
    except ImportError:
        version = None
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
        "cpu_mhz": info.get("cpu MHz"),
        "cpu_flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "cores": os.cpu_count(),
        "cores_available": available,
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _blas(),
        "nnkcli": version,
    }


def machine_kind(m: dict) -> str:
    """A short, file-name-safe name for a kind of machine: the CPU and the cores available.

    Two runs on machines of the same kind land in the same file (the latest wins); the CPU
    model name alone is not enough (virtual machines often report "Intel(R) Xeon(R) Processor"
    for several generations), so the family/model numbers and the AVX-512/AMX flags go in too.
    """
    name = re.sub(r"\((r|tm)\)", "", str(m.get("cpu_model") or "cpu"), flags=re.I)
    name = re.sub(r"\b(cpu|processor)\b", "", name, flags=re.I)
    parts = [name]
    if m.get("cpu_family") and m.get("cpu_model_number"):
        parts.append(f"f{m['cpu_family']}m{m['cpu_model_number']}")
    flags = m.get("cpu_flags") or []
    for flag, short in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            parts.append(short)
            break
    parts.append(f"{m.get('cores_available')}c")
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(p for p in parts if p).lower()).strip("-")
    return slug or "unknown"


def cpu_line(m: dict | None = None) -> str:
    """The CPU in one line: model, family/model numbers, the flags of interest, the cores available."""
    m = machine() if m is None else m
    ident = ""
    if m.get("cpu_family") and m.get("cpu_model_number"):
        ident = f"family {m['cpu_family']} model {m['cpu_model_number']}, "
    flags = " ".join(m.get("cpu_flags") or []) or "none of interest"
    return f"{m.get('cpu_model')} ({ident}flags: {flags}), {m.get('cores_available')} of {m.get('cores')} cores"


def gemm_rate(n: int, threads: int, dtype: str = "float32", repeats: int = 3) -> float | None:
    """GFLOP/s of an n x n x n matrix product on ``threads`` threads, best of ``repeats``; None if unavailable.

    ``float32``: numpy's product (its BLAS, the one the flat search uses). ``bfloat16``: torch's
    (oneDNN: AMX or AVX-512 BF16 where the CPU has them), None when torch is not installed.
    The limit a search kernel of that precision compares against, measured in the same run.
    """
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if dtype == "float32":
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(threads, user_api="blas")

        def product():
            return a @ b
    elif dtype == "bfloat16":
        try:
            import torch
        except ImportError:
            return None
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a).to(torch.bfloat16), torch.from_numpy(b).to(torch.bfloat16)

        class _Restore:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                torch.set_num_threads(before)

        limit = _Restore()

        def product():
            return ta @ tb
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    best = float("inf")
    with limit:
        product()  # warm up (oneDNN builds its kernel on the first call)
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def command_line() -> str:
    """How this benchmark was started, with the script's path as the repository names it."""
    script = Path(sys.argv[0])
    shown = f"benchmarks/{script.name}" if script.parent.name == "benchmarks" else str(script)
    return " ".join(["python", shown, *sys.argv[1:]])


def write_json(path: Path | str, benchmark: str, measurements) -> None:
    """Write ``measurements`` (any JSON value) to ``path`` with the machine, the date and the command."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": benchmark,
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "measurements": measurements,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)  # a killed run never leaves half a file where the docs look


def _status_mib(pid: int, field: str) -> float | None:
    """A ``kB`` field of /proc/PID/status in MiB (None once the process is gone, or off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_measured(cmd: list[str], interval: float = 0.02) -> dict:
    """Run ``cmd``; its wall and CPU seconds, its own peak RSS and peak anonymous memory (MiB), its output.

    The peak RSS is the child's ``VmHWM``, sampled every ``interval`` seconds while it runs (the
    high-water mark only rises, so the last sample is the peak but for the last interval), not
    ``ru_maxrss``: Linux carries the parent's resident size into a child's ``ru_maxrss`` through
    fork and exec, so a benchmark that held a large array reported it for every command it ran.
    ``RssAnon`` (what the process itself must hold, without mapped file pages) is sampled too.
    Returns wall_s, cpu_s, peak_rss_mib, peak_anon_mib, returncode, stdout, stderr (bytes).
    """
    import subprocess
    import tempfile
    import threading
    import time

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
        peak = {"VmHWM": 0.0, "RssAnon": 0.0}
        done = threading.Event()

        def sample() -> None:
            while True:
                for field in peak:
                    now = _status_mib(proc.pid, field)
                    if now is not None:
                        peak[field] = max(peak[field], now)
                if done.wait(interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        wall = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": peak["VmHWM"],
        "peak_anon_mib": peak["RssAnon"],
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": out,
        "stderr": err,
    }
