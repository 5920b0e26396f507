"""The torch search backend (``--backend torch``, ``--device auto|cpu|cuda``, ``--fp16``).

This is the only module of the scoring path that imports torch (the extractor in
``nnkcli/extract`` is the other torch owner). It provides one searcher of the
``nnkcli.evaluation.search`` seam: the train split's normalized rows are multiplied with
each query chunk on the device (``torch.mm``, float32, or float16 with ``--fp16``) and
``torch.topk`` keeps the best candidates per block of train rows; the blocks' candidates
are merged on the device, then re-ranked exactly in float64 from the float32 rows, like
every other searcher. That is the k-NN search of DINO, DINOv2, VISSL, solo-learn and
lightly, with the exact re-ranking added, so the neighbors equal the faiss path's on
tie-free data. With ``--fp16`` (or when the rows do not fit) twice as many candidates
are fetched before the exact re-ranking, so float16 rounding cannot push a true neighbor
out of the top k unless it is within float16 resolution of the k-th one.

The NNK solve and the k-NN voting run in the numpy engine on the CPU (its certificate is
float64; uncertified queries fall back to the per-query solver there): only the search,
which dominates the cost, runs on the device.

Memory: a float32 host copy of the normalized train rows (as a flat faiss index holds),
plus on CUDA a device copy (float16 with ``--fp16``) when it fits in half the free
device memory; otherwise blocks of rows are streamed to the device for every query chunk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.evaluation.options import BACKENDS, DEVICES  # noqa: F401  (re-exported: the backend's choices)

logger = logging.getLogger("nnkcli")

#: train rows multiplied per step (bounds the (chunk x block) similarity matrix)
BLOCK_ROWS = 65536


def _cuda_visible() -> bool:
    """A cheap look for an NVIDIA GPU before paying for ``import torch``."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists()


def resolve_backend(backend: str | None, device: str = "auto", fp16: bool = False) -> tuple[str, str]:
    """``(backend, device)`` to use: ``device="auto"`` picks CUDA (and then torch) when torch sees a GPU.

    Raises
    ------
    InputError
        ``--device cuda`` without a usable GPU, ``--fp16`` or CUDA with the faiss backend.
    MissingDependencyError
        The torch backend without torch installed.
    """
    if backend not in (None, *BACKENDS):
        raise InputError(f"unknown backend {backend!r}", hint="choose faiss or torch")
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}", hint="choose auto, cpu or cuda")
    if device == "auto":
        device = "cuda" if backend != "faiss" and _cuda_visible() and _torch_cuda() else "cpu"
    if backend is None:
        backend = "torch" if device == "cuda" or fp16 else "faiss"
    if backend == "faiss" and device == "cuda":
        raise InputError("--device cuda needs --backend torch (nnkcli's faiss path runs on the CPU)",
                         hint="use --backend torch --device cuda")
    if backend == "faiss" and fp16:
        raise InputError("--fp16 needs --backend torch", hint="use --backend torch --fp16")
    if backend == "torch":
        _import_torch()
        if device == "cuda" and not _torch_cuda():
            raise InputError("--device cuda: torch sees no CUDA GPU",
                             hint="use --device cpu (or auto), or install a CUDA build of torch")
    return backend, device


def _import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("--backend torch", "torch") from None
    return torch


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchSearcher:
    """Exact-re-ranked neighbors by a chunked matmul + top-k on a torch device.

    Parameters
    ----------
    split : store split (or anything with ``n``, ``dim`` and ``iter_chunks``), the train rows
    device : {"cpu", "cuda"} or "cuda:N"
    fp16 : bool, default=False
        Multiply in float16 on the device (half the device memory; CUDA only in practice).
    block_rows : int, default=BLOCK_ROWS
    resident : bool, optional
        Keep the rows on the device (default: when they fit in half its free memory);
        False streams them block by block for every query chunk.
    """

    def __init__(self, split, *, device: str = "cpu", fp16: bool = False, block_rows: int = BLOCK_ROWS,
                 resident: bool | None = None):
        from nnkcli.index import normalize_rows

        torch = _import_torch()
        self.torch = torch
        self.n, self.dim = int(split.n), int(split.dim)
        self.device = torch.device(device)
        self.fp16 = bool(fp16)
        self.block_rows = int(block_rows)
        self.host = np.empty((self.n, self.dim), dtype=np.float32)
        for start, chunk in split.iter_chunks(self.block_rows):
            self.host[start:start + len(chunk)] = normalize_rows(chunk)
        dtype = torch.float16 if self.fp16 else torch.float32
        self.dtype = dtype
        self.resident = None
        if resident is False:
            pass
        elif self.device.type == "cpu":
            base = torch.from_numpy(self.host)  # shares the host copy's memory
            self.resident = base.to(dtype) if self.fp16 else base
        else:
            free, _total = torch.cuda.mem_get_info(self.device)
            need = self.n * self.dim * (2 if self.fp16 else 4)
            if resident or need <= free // 2:
                self.resident = torch.from_numpy(self.host).to(self.device).to(dtype)
            else:
                logger.info(f"train rows ({need / 2**30:.1f} GiB) do not fit on {self.device}; streaming them "
                            f"in blocks of {self.block_rows} rows")
        # float16 rounding can reorder candidates near the k-th: fetch more before the exact re-ranking
        self.margin = self.fp16

    def _blocks(self):
        torch = self.torch
        for a in range(0, self.n, self.block_rows):
            b = min(a + self.block_rows, self.n)
            if self.resident is not None:
                yield a, self.resident[a:b]
            else:
                yield a, torch.from_numpy(self.host[a:b]).to(self.device, non_blocking=True).to(self.dtype)

    def candidates(self, q: np.ndarray, c: int) -> np.ndarray:
        """The ``c`` train rows with the largest device-precision similarity per query, (B, c) int64."""
        torch = self.torch
        Q = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device).to(self.dtype)
        best_v = best_i = None
        for a, T in self._blocks():
            S = Q @ T.T
            kk = min(c, S.shape[1])
            v, i = torch.topk(S, kk, dim=1)
            i = i.to(torch.int64) + a
            if best_v is None:
                best_v, best_i = v, i
            else:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                keep = torch.topk(v, min(c, v.shape[1]), dim=1).indices
                best_v, best_i = torch.gather(v, 1, keep), torch.gather(i, 1, keep)
        return best_i.cpu().numpy()

    def neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        from nnkcli.evaluation.search import drop_own_rows, rerank

        extra = 1 if exclude_self else 0
        c = min(self.n, (2 * k if self.margin else k) + extra)
        ids = self.candidates(q, c)
        if exclude_self:
            ids = drop_own_rows(ids, start, c - 1)
        ids, sims, X, missing = rerank(q, ids, self._vectors)
        return ids[:, :k], sims[:, :k], np.ascontiguousarray(X[:, :k]), missing[:, :k]

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.host[ids]

    def close(self) -> None:
        self.resident = None
        self.host = None
