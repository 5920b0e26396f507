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

With the torch backend the whole chunk is scored on the device
(``score_on_device``): the exact float64 re-ranking of the candidates from the device
rows, the k-NN voting (every weighting, temperature and top-5 rule) and the NNK solve
(``nnkcli.evaluation.torch_solver``: a port of the batched active-set engine, float64
polish and certificate, uncertified queries re-solved by the CPU solver). The results
come back to the host as the numpy arrays the accumulators and files take. The Gaussian
kernel and ``--solver pruning`` have no device port: with either, the chunk's neighbors
are copied back and scored by the numpy code (``device_scoring``).

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
from nnkcli.evaluation.options import BACKENDS, DEVICES
from nnkcli.evaluation.search import DeviceNeighbors, Searcher

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
        raise InputError(
            "--device cuda needs --backend torch (nnkcli's faiss path runs on the CPU)",
            hint="use --backend torch --device cuda",
        )
    if backend == "faiss" and fp16:
        raise InputError("--fp16 needs --backend torch", hint="use --backend torch --fp16")
    if backend == "torch":
        _import_torch()
        if device == "cuda" and not _torch_cuda():
            raise InputError(
                "--device cuda: torch sees no CUDA GPU",
                hint="use --device cpu (or auto), or install a CUDA build of torch",
            )
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


class TorchSearcher(Searcher):
    """Exact-re-ranked neighbors by a chunked matmul + top-k on a torch device (an ``on_device`` searcher).

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

    #: the neighbors stay on the device, where ``score_on_device`` scores them
    on_device = True

    def __init__(
        self,
        split,
        *,
        device: str = "cpu",
        fp16: bool = False,
        block_rows: int = BLOCK_ROWS,
        resident: bool | None = None,
    ):
        from nnkcli.numerics.kernels import normalize_rows

        torch = _import_torch()
        self.torch = torch
        self.n, self.dim = int(split.n), int(split.dim)
        self.device = torch.device(device)
        self.fp16 = bool(fp16)
        self.block_rows = int(block_rows)
        self._labels = None
        host = np.empty((self.n, self.dim), dtype=np.float32)
        for start, chunk in split.iter_chunks(self.block_rows):
            host[start : start + len(chunk)] = normalize_rows(chunk)
        self.host: np.ndarray | None = host  # None once closed
        dtype = torch.float16 if self.fp16 else torch.float32
        self.dtype = dtype
        self.resident = None
        if resident is False:
            pass
        elif self.device.type == "cpu":
            base = torch.from_numpy(host)  # shares the host copy's memory
            self.resident = base.to(dtype) if self.fp16 else base
        else:
            free, _total = torch.cuda.mem_get_info(self.device)
            need = self.n * self.dim * (2 if self.fp16 else 4)
            if resident or need <= free // 2:
                self.resident = torch.from_numpy(host).to(self.device).to(dtype)
            else:
                logger.info(
                    f"train rows ({need / 2**30:.1f} GiB) do not fit on {self.device}; streaming them "
                    f"in blocks of {self.block_rows} rows"
                )
        # float16 rounding can reorder candidates near the k-th: fetch more before the exact re-ranking
        self.margin = self.fp16

    def _blocks(self):
        torch = self.torch
        for a in range(0, self.n, self.block_rows):
            b = min(a + self.block_rows, self.n)
            if self.resident is not None:
                yield a, self.resident[a:b]
            else:
                yield a, torch.from_numpy(self._host()[a:b]).to(self.device, non_blocking=True).to(self.dtype)

    def candidates(self, q: np.ndarray, c: int) -> np.ndarray:
        """The ``c`` train rows with the largest device-precision similarity per query, (B, c) int64."""
        Q = self.torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device).to(self.dtype)
        return self._candidates(Q, c).cpu().numpy()

    def _candidates(self, Q, c: int):
        torch = self.torch
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
        return best_i

    def device_neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool) -> DeviceNeighbors:
        """The exact-re-ranked top ``k`` (``nnkcli.evaluation.search``'s four arrays) as device tensors."""
        torch = self.torch
        extra = 1 if exclude_self else 0
        c = min(self.n, (2 * k if self.margin else k) + extra)
        Q = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        ids = self._candidates(Q.to(self.dtype), c)
        if exclude_self:
            ids = drop_own_rows(ids, start, c - 1)
        ids, sims, X, missing = rerank(Q, ids, self._vectors)
        return DeviceNeighbors(ids[:, :k], sims[:, :k], X[:, :k].contiguous(), missing[:, :k])

    def neighbors(self, q: np.ndarray, start: int, k: int, exclude_self: bool):
        """``device_neighbors`` as numpy arrays (the searcher seam's other callers)."""
        return self.device_neighbors(q, start, k, exclude_self).numpy()

    def _vectors(self, ids):
        """Stored float32 rows of device ids (B, c) >= 0: from the device copy when it is float32."""
        if self.resident is not None and not self.fp16:
            return self.resident[ids]
        return self.torch.from_numpy(self._host()[ids.cpu().numpy()]).to(self.device)

    def _host(self) -> np.ndarray:
        """The normalised train rows (n, dim) float32 in host memory."""
        if self.host is None:
            raise RuntimeError("the torch searcher is closed")
        return self.host

    def labels_on_device(self, labels: np.ndarray):
        """The train labels (n,) int64 on the device, copied once."""
        if self._labels is None:
            self._labels = self.torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        return self._labels

    def labels_changed(self) -> None:
        self._labels = None  # copied again, from the new labels, when next asked for

    def close(self) -> None:
        self.resident = None
        self.host = None
        self._labels = None


# ------------------------------------------------------------------------- the search seam, on the device


def drop_own_rows(ids, start: int, k: int):
    """``nnkcli.evaluation.search.drop_own_rows`` on device ids (B, c): remove row ``start + i`` from query i."""
    torch = _import_torch()
    own = torch.arange(start, start + ids.shape[0], device=ids.device)[:, None]
    ids = torch.where(ids == own, -1, ids)
    order = torch.sort((ids < 0).to(torch.int8), dim=1, stable=True).indices
    ids = torch.gather(ids, 1, order)[:, :k]
    if ids.shape[1] < k:
        ids = torch.cat([ids, ids.new_full((ids.shape[0], k - ids.shape[1]), -1)], dim=1)
    return ids


def rank_order(sims, ids):
    """Per row: indices sorting by similarity descending, ties by id ascending (missing ids last)."""
    torch = _import_torch()
    key = torch.where(ids < 0, torch.iinfo(torch.int64).max, ids)
    order = torch.sort(key, dim=1, stable=True).indices
    by_sim = torch.sort(torch.gather(sims, 1, order), dim=1, descending=True, stable=True).indices
    return torch.gather(order, 1, by_sim)


def rerank(Q, ids, vectors):
    """``nnkcli.evaluation.search.rerank`` on the device: float64 similarities of candidates ``ids`` (B, c).

    ``Q`` (B, d) float32 normalized queries; ``vectors(safe_ids)`` the float32 rows (B, c, d).
    Returns (ids, sims, X, missing) in the exact order (similarity descending, id ascending).
    """
    from nnkcli.evaluation.torch_solver import products

    torch = _import_torch()
    missing = ids < 0
    X = vectors(torch.where(missing, 0, ids))
    # float64 products of the float32 rows, a few queries at a time (bounds the widened copy)
    sims = products(X, 0, X.shape[1], Q.double())
    sims = torch.where(missing, -torch.inf, sims)
    ids = torch.where(missing, -1, ids)
    order = rank_order(sims, ids)
    take = torch.gather
    X = take(X, 1, order[:, :, None].expand(-1, -1, X.shape[2]))
    return take(ids, 1, order), take(sims, 1, order), X, take(missing, 1, order)


# ------------------------------------------------------------------------- scoring, on the device


def device_scoring(opts) -> bool:
    """Whether ``score_on_device`` covers ``opts``: every k-NN setting; NNK with the cosine kernel, exact solver.

    The Gaussian kernel's sigma depends on k and ``--solver pruning`` is the NNK paper's
    float32 loop with its own diagnostics: neither is ported, so such chunks go to numpy.
    """
    return "nnk" not in opts.methods or (opts.kernel == "cosine" and opts.solver == "exact")


def score_on_device(found: DeviceNeighbors, train_labels, n_classes: int, opts, timing: dict) -> dict:
    """Every method at every ``opts.k_values`` of one chunk, on the neighbors' device.

    ``train_labels`` (n,) int64 tensor on that device. Returns ``{key: dict(top=, scores=,
    theta=, support=)}`` of numpy arrays, keyed as ``scoring.score_chunk``'s results
    ((method, k), and ("knn", k, T) for the further temperatures of a grid), inserted in its order.
    """
    import time

    from nnkcli.evaluation.torch_solver import nnk_solve_cosine_torch
    from nnkcli.numerics.scores import TOP

    torch = _import_torch()
    k_values = opts.k_values
    ids, sims, X, missing = found.ids, found.sims, found.X, found.missing
    nb = torch.where(missing, -1, train_labels[torch.where(missing, 0, ids)])
    finite = torch.where(missing, 0.0, sims)  # a missing neighbor weighs nothing
    out = {}
    if "knn" in opts.methods:
        t0 = time.perf_counter()
        grid = [
            knn_scores(finite, nb, n_classes, k_values, weighting=opts.weighting, temperature=t)
            for t in opts.knn_temperatures
        ]
        for i_k, k in enumerate(k_values):
            for i, temperature in enumerate(opts.knn_temperatures):
                scores = grid[i][i_k]
                key = ("knn", k) if i == 0 else ("knn", k, temperature)
                out[key] = {
                    "top": topk_classes(scores, TOP, rule=opts.top5_rule).cpu().numpy(),
                    "scores": scores.cpu().numpy(),
                }
        timing["knn_s"] += time.perf_counter() - t0
    if "nnk" in opts.methods:
        t0 = time.perf_counter()
        g = 0.5 * (1.0 + finite)
        g = torch.where(missing, 0.0, g)  # an absent neighbor: zero vector and g = 0, so theta = 0
        Xc = torch.where(missing[:, :, None], 0.0, X)
        for k, (res, theta) in zip(k_values, nnk_solve_cosine_torch(Xc, g, k_values, tol=opts.tol), strict=True):
            scores = nnk_scores(theta, nb[:, :k], n_classes)
            out[("nnk", k)] = {
                "top": topk_classes(scores, TOP, rule=opts.top5_rule).cpu().numpy(),
                "scores": scores.cpu().numpy(),
                "theta": res.theta,
                "support": res.support_size,
            }
            timing["nnk_fallbacks"] += int(np.count_nonzero(res.fallback))
        timing["nnk_s"] += time.perf_counter() - t0
    return out


def _class_sums(w, labels, n_classes: int, columns, snapshots=None):
    """(B, C) float64 sums of weights ``w`` per class, label -1 skipped, added column by column.

    One column per step, so each query's sums are added neighbor by neighbor in order, as
    numpy's ``bincount`` in ``nnkcli.numerics.scores`` adds them (the same float64 sums),
    and no two additions of a step hit one (query, class) cell (deterministic on a GPU,
    where a scatter of colliding indices is not). ``snapshots``: after how many columns
    to keep a copy (the k of a sweep); returns the list of copies, else the final sums.
    """
    torch = _import_torch()
    B = w.shape[0]
    valid = labels >= 0
    w = torch.where(valid, w, 0.0)
    lab = labels.clamp(min=0)
    sums = torch.zeros((B, n_classes), dtype=torch.float64, device=w.device)
    keep = set(snapshots or ())
    copies = []
    for j in range(columns):
        sums.scatter_add_(1, lab[:, j : j + 1], w[:, j : j + 1])
        if j + 1 in keep:
            copies.append(sums.clone())
    return copies if snapshots is not None else sums


def knn_scores(sims, labels, n_classes: int, k_values, *, weighting: str = "exp", temperature: float = 0.07):
    """``nnkcli.numerics.scores.knn_scores`` on the device at every k of ``k_values`` (the leading neighbors).

    ``sims`` (B, K) float64 tensor (0 for missing neighbors), ``labels`` (B, K) int64 (-1 = none).
    Returns a list of (B, C) float64 tensors, one per k.
    """
    from nnkcli.numerics.scores import WEIGHTINGS

    torch = _import_torch()
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}", hint=f"choose one of: {', '.join(WEIGHTINGS)}")
    K = max(k_values)
    s = sims[:, :K].to(torch.float64)
    if weighting == "exp":
        temperature = float(temperature)
        if not temperature > 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        w = torch.exp(s / temperature)
    elif weighting == "similarity":
        w = s
    else:
        w = torch.ones_like(s)
    if not bool(torch.isfinite(w).all()):
        raise InputError(
            "sims holds NaN or infinite values (or exp(s/T) overflows)",
            hint="check the similarities and the temperature",
        )
    return _class_sums(w, labels[:, :K], int(n_classes), K, snapshots=list(k_values))


def nnk_scores(theta, labels, n_classes: int):
    """``nnkcli.numerics.scores.nnk_scores`` on the device: ``sum_j theta_j [y_j = c] / sum_j theta_j``.

    Only the support is added (zero weights change no sum): its weights are packed into the
    first columns, in neighbor order, so the sums take |support| steps, not k.
    """
    torch = _import_torch()
    if not bool(torch.isfinite(theta).all()) or bool((theta < 0).any()):
        raise InputError("theta must be finite and non-negative")
    on = theta > 0
    t = int(on.sum(dim=1).max()) if theta.numel() else 0
    order = torch.sort((~on).to(torch.int8), dim=1, stable=True).indices[:, :t]
    packed = torch.gather(theta, 1, order)
    lab = torch.where(torch.gather(on, 1, order), torch.gather(labels, 1, order), -1)
    sums = _class_sums(packed, lab, int(n_classes), t)
    total = theta.sum(dim=1)[:, None]
    return torch.where(total > 0, sums / torch.where(total > 0, total, 1.0), 0.0)


def topk_classes(scores, k: int = 5, *, rule: str = "strict"):
    """``nnkcli.numerics.scores.topk_classes`` on the device: the k best classes, ties to the lower id.

    A stable descending sort keeps equal scores in class-id order, as numpy's stable
    argsort of ``-scores`` does; ``rule="strict"`` lists no class whose score is ``<= 0``.
    """
    from nnkcli.numerics.scores import TOP5_RULES

    torch = _import_torch()
    if rule not in TOP5_RULES:
        raise InputError(f"unknown top-5 rule {rule!r}", hint=f"choose one of: {', '.join(TOP5_RULES)}")
    if bool(torch.isnan(scores).any()):
        raise InputError("scores hold NaN values")
    B, C = scores.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    if rule == "strict":
        top = torch.where(torch.gather(scores, 1, order) > 0, order, -1)
    else:
        top = order
    if k > C:
        top = torch.cat([top, top.new_full((B, k - C), -1)], dim=1)
    return top.to(torch.int64)
