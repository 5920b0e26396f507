"""The certified search kernels over a flat index's rows: :func:`kernel_search`, its float32 and bfloat16 rounds.

Part of the index family: the float32 product and its heap (:func:`nnkcli.index_flat.flat_search`)
are :mod:`nnkcli.index_flat`'s, the bfloat16 product :mod:`nnkcli.index_bf16`'s, the bounds and
the certificate :mod:`nnkcli.numerics.certified`'s. Here: which rows a kernel keeps between
searches (:class:`KernelRows`), the search itself, and the bfloat16 round's sieve
(:class:`Bf16Sieve`) and certificate (:func:`bf16_certify`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnkcli import index_flat as flat  # its block sizes read at each search (tests set them)

#: candidates the float32 kernel keeps beyond k: its rounding (~1e-5 at d = 784) leaves few rows that close
FP32_EXTRA = 8
#: the bfloat16 kernel keeps at most BF16_FACTOR * k + BF16_EXTRA candidates per query: a query with more rows
#: than that within its bound (~2^-8 for unit vectors) of its k-th falls back to float32
BF16_FACTOR, BF16_EXTRA = 4, 256
#: products of one bfloat16 block (queries x rows): 16 MiB of float32 results (oneMKL ran at its best rate from 2^21
#: to 2^22 products a call here, oneDNN from 2^22 to 2^24; each block also updates the thresholds, which then keep
#: fewer rows of the next)
BF16_BLOCK_ELEMENTS = 2**22
#: queries whose bounds are certified at once (the bfloat16 kernel's (queries, 4k + 256) float64 arrays)
CERTIFY_ROWS = 256


class KernelRows:
    """What a kernel keeps of the rows of one flat index between searches: their largest norm, the bfloat16 copy.

    Made by the main thread (the bfloat16 copy may import torch), on ``threads`` threads; read by any thread.
    ``stream``: no bfloat16 copy, the rows rounded block by block as each search multiplies them
    (:class:`nnkcli.index_bf16.Bf16Rows`).
    """

    def __init__(self, vectors: np.ndarray, kernel: str, threads: int = 1, stream: bool = False):
        from nnkcli.numerics.certified import row_norms

        self.vectors = vectors
        self.kernel = kernel
        self.bf16 = None
        if kernel == "bf16":
            from nnkcli.index_bf16 import Bf16Rows, bf16_unavailable

            if bf16_unavailable() is None:  # the library's own check (auto asked without it)
                self.bf16 = Bf16Rows(vectors, threads=threads, stream=stream)
            else:  # float32 then
                self.kernel = "fp32"
        if self.bf16 is not None:
            self.max_norm = self.bf16.maxima[2]
        else:  # a block of rows at a time: ``vectors`` may be several arrays taken as one (a sharded index)
            step = max(1, flat.FLAT_BLOCK_BYTES // (4 * max(1, vectors.shape[1])))
            norms = [float(row_norms(vectors[j : j + step]).max()) for j in range(0, len(vectors), step)]
            self.max_norm = max(norms, default=0.0)


@dataclass
class KernelResult:
    """A certified search: ``ids`` (m, k) int64, the exact top k of each query as a set, its exact k-th last.

    ``fallbacks``: queries the bfloat16 kernel could not certify, searched again in float32;
    ``widened``: searches repeated with more candidates; ``computed``: float64 similarities computed.
    """

    ids: np.ndarray
    kernel: str
    fallbacks: int = 0
    widened: int = 0
    computed: int = 0


def kernel_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, kernel: str = "fp32", *, rows: KernelRows | None = None
) -> KernelResult:
    """The exact top ``k`` of ``queries`` (m, d) among ``vectors`` (n, d), both float32, k <= n.

    *Exact*: the k rows of largest float64 similarity (:func:`nnkcli.numerics.certified.exact_sims`),
    ties by row id -- whichever kernel finds them, for any block of queries. ``fp32``: the
    float32 product with a few extra candidates, proved by its rounding bound; a query it cannot
    prove is searched again with four times as many. ``bf16`` (a resolved kernel,
    :func:`nnkcli.index_flat.resolve_kernel`): the bfloat16 product keeps ``BF16_FACTOR k + BF16_EXTRA``
    candidates, proved by its bound; a query it cannot prove falls back to ``fp32``.
    ``rows``: the :class:`KernelRows` of ``vectors``, kept by the caller between searches.
    """
    m, n = int(queries.shape[0]), int(vectors.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"kernel_search needs 1 <= k <= n (k={k}, n={n})")
    if rows is None:
        rows = KernelRows(vectors, kernel)
    result = KernelResult(np.full((m, k), -1, dtype=np.int64), kernel)
    todo = np.arange(m)
    if kernel == "bf16" and m:
        if rows.bf16 is None:
            raise ValueError("kernel_search: bf16 needs KernelRows made for bf16")
        top, ok, result.computed = bf16_round(vectors, queries, k, rows.bf16)
        result.ids[ok] = top[ok]
        todo = np.flatnonzero(~ok)
        result.fallbacks = int(todo.size)
    c = min(n, k + FP32_EXTRA + k // 16)
    while todo.size:
        q = queries[todo]
        top, ok, computed = flat.fp32_round(vectors, q, k, c, rows.max_norm)
        result.computed += computed
        result.ids[todo[ok]] = top[ok]
        todo = todo[~ok]
        if todo.size:
            result.widened += int(todo.size)
            c = min(n, 4 * c)
    return result


def bf16_round(vectors, queries, k: int, rows):
    """The bfloat16 round of :func:`kernel_search`: (top (m, k), ok (m,), computed); see :class:`Bf16Sieve`."""
    from nnkcli.index_bf16 import Bf16Queries

    m = len(queries)
    q = Bf16Queries(queries, rows, k)
    sieve = Bf16Sieve(q, rows, k, vectors.shape[1])
    sieve.run()
    ids, b, upper_out = sieve.candidates()
    top, ok, computed = np.full((m, k), -1, dtype=np.int64), np.zeros(m, dtype=bool), 0
    # the bounds are (m, c) float64 arrays: made CERTIFY_ROWS queries at a time, c the most any of them kept
    for i0 in range(0, m, CERTIFY_ROWS):
        i = np.arange(i0, min(m, i0 + CERTIFY_ROWS))
        c = max(k, int((ids[i] >= 0).sum(axis=1).max()))  # the candidates come best first, -1 last
        args = (b[i, :c], ids[i, :c], k, upper_out[i], rows)
        top[i], ok[i], done = bf16_certify(vectors, queries[i], q, i, *args)
        computed += done
    return top, ok, computed


class Bf16Sieve:
    """Each query's candidates: every row whose shifted bfloat16 product reaches a threshold that rises as rows pass.

    The products come a block of rows at a time (``qh . xh - shift`` as float32, see
    :class:`nnkcli.index_bf16.Bf16Product`); a row is kept when its product is at least the
    query's threshold R (float32): one vectorised comparison per product, where a heap would
    take each in turn. R starts a little below an estimate of the k-th product (from
    a sample of the rows) and, after each block, rises to the largest value that cannot matter:
    the k-th kept product v minus twice its bound, less a margin -- a row below it has an upper
    bound below the k-th lower bound. A query whose kept rows would outgrow the capacity
    (``BF16_FACTOR k + BF16_EXTRA``) keeps its largest and raises R to the smallest of them.
    Every row not kept has a product at most the final R, which is the bound
    :func:`bf16_certify` proves the rest with; a query it cannot prove (a crowd of near-ties
    wider than the capacity within the bound) falls back to float32.
    """

    def __init__(self, q, rows, k: int, d: int):
        from nnkcli.numerics.certified import U_FP64, floor32

        self.q, self.rows, self.k = q, rows, int(k)
        self.n = rows.n
        m = int(q.low.shape[0])
        self.cap = min(self.n, BF16_FACTOR * self.k + BF16_EXTRA)
        # the bound of a product b with the rows' largest norms: slope * |b| + const (shifted_bound at b = 0)
        self.slope = rows.lib.out_unit + U_FP64
        self.const = shifted_bound(d, 0.0, q.low_norm, q.res_norm, rows.maxima, q.norm, q.shift, rows.lib.out_unit)
        self.const *= 1.0 + 1e-6
        self.values = np.full((m, self.cap), -np.inf, dtype=np.float32)  # kept products
        self.ids = np.full((m, self.cap), -1, dtype=np.int64)
        self.fill = np.zeros(m, dtype=np.int64)
        self.R = floor32(q.start - q.shift)
        self._seen = np.zeros(m, dtype=np.int64)  # the kept count at the last raise of R
        self._every = max(8, self.k // 2)

    def _threshold(self, v: np.ndarray, const: np.ndarray) -> np.ndarray:
        """R (float32) for k-th kept products v (float64): v - 2 w(v), a margin lower."""
        from nnkcli.numerics.certified import floor32

        return floor32(v - 2.0 * (self.slope * np.abs(v) + const) * (1.0 + 1e-3) - 1e-12)

    def run(self) -> None:
        from nnkcli.index_bf16 import Bf16Product

        m = self.values.shape[0]
        block = flat.clamp_block_rows(m, self.n, max(flat.FLAT_MIN_ROWS, BF16_BLOCK_ELEMENTS // max(m, self.rows.d, 1)))
        product = Bf16Product(self.rows, self.q, block)
        self._mask = np.empty(m * block, dtype=bool)  # one buffer for every block's comparison
        for j0 in range(0, self.n, block):
            j1 = min(self.n, j0 + block)
            values = product.values(j0, j1)  # (m, j1 - j0) float32, a view of the product's buffer
            mask = self._mask[: values.size].reshape(values.shape)
            np.greater_equal(values, self.R[:, None], out=mask)
            hits = np.flatnonzero(mask)
            if hits.size:
                self._keep(hits, values, j0, j1 - j0)
        # R from each query's final k-th kept, and the rows below it dropped: the certificate then bounds fewer
        # candidates (on Fashion-MNIST a median 126 of the 300 kept)
        full = np.flatnonzero(self.fill >= self.k)
        if full.size:
            self._raise(full)
            self._compact(full)

    def _keep(self, hits: np.ndarray, products: np.ndarray, j0: int, width: int) -> None:
        qi = hits // width
        values = products.ravel()[hits]
        ids = j0 + hits % width
        counts = np.bincount(qi, minlength=len(self.fill))
        grew = counts > 0
        over = np.flatnonzero(self.fill + counts > self.cap)
        if over.size:
            self._compact(over)
            over = over[self.fill[over] + counts[over] > self.cap]
        if over.size:
            mine = np.isin(qi, over)
            self._truncate(over, counts[over], qi[mine], values[mine], ids[mine])
            qi, values, ids = qi[~mine], values[~mine], ids[~mine]
            counts[over] = 0
        if qi.size:
            starts = np.cumsum(counts) - counts
            pos = self.fill[qi] + np.arange(qi.size) - starts[qi]
            self.values[qi, pos] = values
            self.ids[qi, pos] = ids
            self.fill += counts
        # R is raised from the k-th kept product only for the queries that kept a good many rows since their last
        # raise (a partition of their kept rows costs as much as a block's comparison): a lower R keeps a few more
        # rows of the next blocks, which changes no result
        grown = np.flatnonzero(grew & (self.fill >= self.k) & (self.fill - self._seen >= self._every))
        if grown.size:
            self._seen[grown] = self.fill[grown]
            self._raise(grown)

    def _raise(self, which: np.ndarray) -> None:
        """Raise R of queries ``which`` (each holding at least k kept products) to the threshold of their k-th kept."""
        kth = np.partition(self.values[which], self.cap - self.k, axis=1)[:, self.cap - self.k]
        self.R[which] = np.maximum(self.R[which], self._threshold(kth.astype(np.float64), self.const[which]))

    def _truncate(self, over: np.ndarray, counts: np.ndarray, qi, values, ids) -> None:
        """Queries ``over`` would keep more than the capacity: keep their ``cap`` largest, raise R to the smallest kept.

        Every row dropped then has a product at most R (ties included), as the certificate needs.
        """
        width = self.cap + int(counts.max())
        vals = np.full((over.size, width), -np.inf, dtype=np.float32)
        keys = np.full((over.size, width), -1, dtype=np.int64)
        vals[:, : self.cap], keys[:, : self.cap] = self.values[over], self.ids[over]
        row = np.searchsorted(over, qi)
        starts = np.cumsum(counts) - counts
        col = self.cap + np.arange(qi.size) - starts[row]
        vals[row, col], keys[row, col] = values, ids
        best = np.argpartition(-vals, self.cap - 1, axis=1)[:, : self.cap]
        self.values[over] = np.take_along_axis(vals, best, 1)
        self.ids[over] = np.take_along_axis(keys, best, 1)
        self.fill[over] = self.cap
        self.R[over] = np.maximum(self.R[over], self.values[over].min(axis=1))

    def _compact(self, which: np.ndarray) -> None:
        """Drop the kept products of queries ``which`` that are now below their threshold."""
        vals, ids = self.values[which], self.ids[which]
        stay = (vals >= self.R[which, None]) & (ids >= 0)
        order = np.argsort(~stay, axis=1, kind="stable")
        vals, ids = np.take_along_axis(vals, order, 1), np.take_along_axis(ids, order, 1)
        count = stay.sum(axis=1)
        gone = np.arange(self.cap)[None, :] >= count[:, None]
        vals[gone], ids[gone] = -np.inf, -1
        self.values[which], self.ids[which], self.fill[which] = vals, ids, count
        self._seen[which] = np.minimum(self._seen[which], count)

    def candidates(self):
        """(ids (m, c) -1 padded, b (m, c) float64 shifted products, upper_out (m,)): best first."""
        c = int(max(self.k, self.fill.max(initial=0)))
        order = np.argsort(-self.values[:, :c], axis=1, kind="stable")
        ids = np.take_along_axis(self.ids[:, :c], order, 1)
        b = np.take_along_axis(self.values[:, :c], order, 1).astype(np.float64)
        b[ids < 0] = -np.inf
        # a row never kept, or dropped, has a product below the final R; none where every row is kept
        upper_out = np.where(self.fill >= self.n, -np.inf, self.R.astype(np.float64))
        return ids, b, upper_out


def shifted_bound(d: int, b, q_low, q_res, x: tuple, q_norm, shift, out_unit: float):
    """Bound on |fl64(b + shift) - t| of a shifted bfloat16 product b: ``bf16_bound`` of b + shift, plus the
    rounding of that sum in float64 (at most 2^-53 (|b| + |shift|)) when their exponents lie far apart.

    ``x``: the rows' (low_norm, res_norm, norm), as :attr:`nnkcli.index_bf16.Bf16Rows.maxima` orders them;
    ``out_unit``: the product's output rounding (the library's).
    """
    from nnkcli.numerics.certified import U_FP64, bf16_bound

    x_low, x_res, x_norm = x
    err = bf16_bound(d, b, q_low, q_res, x_low, x_res, x_norm, q_norm, shift, out_unit)
    return err + U_FP64 * (np.abs(b) + np.abs(shift))


def bf16_certify(vectors, queries, q, i: np.ndarray, b, ids, k: int, upper_b, rows):
    """:func:`certified_topk` of queries ``i`` from their shifted bfloat16 candidates ``b``.

    ``upper_b``: per query, a product every non-candidate row lies below (-inf: there is none).
    """
    from nnkcli.numerics.certified import certified_topk, interval

    d = vectors.shape[1]
    shift = q.shift[i, None]
    qn = (q.low_norm[i, None], q.res_norm[i, None])
    safe = np.maximum(ids, 0)
    finite = np.where(ids >= 0, b, 0.0)
    x = (rows.low_norm[safe], rows.res_norm[safe], rows.norm[safe])
    err = shifted_bound(d, finite, *qn, x, q.norm[i, None], shift, rows.lib.out_unit)
    lo, hi = interval(finite + shift, err)
    lo[ids < 0], hi[ids < 0] = -np.inf, -np.inf
    upper_out = np.full(len(b), -np.inf)
    others = np.isfinite(upper_b)
    if others.any():
        # b + u |b| grows with b (u < 1): a non-candidate's upper bound is at most that of upper_b
        last = np.where(others, upper_b, 0.0)[:, None]
        bound = shifted_bound(d, last, *qn, rows.maxima, q.norm[i, None], shift, rows.lib.out_unit)
        upper_out = np.where(others, interval(last + shift, bound)[1][:, 0], -np.inf)
    bounds_of = flat.fp32_bounds_of(vectors, queries, rows.maxima[2])
    return certified_topk(ids, lo, hi, upper_out, k, flat.sims_of(vectors, queries), bounds_of)
