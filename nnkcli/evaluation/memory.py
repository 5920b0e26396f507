"""How many queries are scored and searched at once: the evaluation's memory bound.

Memory: the index (n_train x d float32 for a flat index) plus, per chunk of B
queries at largest k K, about ``B * (4*K*d + 32*K*K + 16*C)`` bytes (neighbor
vectors, kernel blocks and solver work, class scores), for each of the chunks in
flight (one per thread), plus the search blocks in flight (one per thread, at least two:
their queries and ids, within ``SEARCH_IDS_BUDGET`` together). The default chunk size keeps the
chunks together under ``CHUNK_MEMORY_BUDGET``; where every method costs the same per
query whatever the chunk (k-NN, NNK on the compiled engine) the chunk is smaller still,
~8 MiB of neighbor vectors (``query_by_query_chunk``). Nothing of size n_query x n_train
is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnkcli.errors import InputError
from nnkcli.evaluation.options import CHUNK_MEMORY_BUDGET, ScoringOptions
from nnkcli.evaluation.scoring import solves_cosine_nnk
from nnkcli.evaluation.search import Searcher
from nnkcli.numerics import compiled

#: the search blocks in flight (one per thread, at least two) hold their ids, distances and
#: queries within this together (a 4,096-query block needs ~16 MiB at k = 200, d = 384)
SEARCH_IDS_BUDGET = 128 * 2**20
#: neighbor-vector bytes of one scoring chunk where the scoring costs the same per query
#: whatever the chunk (see ``query_by_query_chunk``), and the fewest queries of such a chunk
QUERY_BY_QUERY_CHUNK_BYTES = 8 * 2**20
QUERY_BY_QUERY_MIN_CHUNK = 16
#: the largest floor (a 20-k sweep at k = 200, d = 784 ran 17 % slower with 16-query chunks, and as
#: fast with 64 as with 111)
QUERY_BY_QUERY_MAX_FLOOR = 64
#: ... and the most neighbor-vector bytes the floor may ask of a chunk: below glibc's largest mmap
#: threshold (32 MiB), where a freed chunk's memory is reused by the next, not returned to the kernel
#: and faulted in (and zeroed) afresh. The 20-k sweep at k = 200, d = 784 ran 15 % faster with
#: 32-query chunks (20 MiB) than with 64 (40 MiB) on a 2-core Xeon whose fresh pages were slow.
QUERY_BY_QUERY_MAX_BYTES = 20 * 2**20


def query_bytes(k: int, dim: int, n_classes: int) -> int:
    """Working memory of one query at k neighbors (see the module docstring), in bytes."""
    return 4 * k * dim + 32 * k * k + 16 * max(n_classes, 1) + 64 * k


@dataclass(frozen=True)
class ChunkBudget:
    """The working memory of one scoring chunk, and where it comes from.

    ``total``: the evaluation's budget (``CHUNK_MEMORY_BUDGET``, 512 MiB, or a sharded index's
    smaller one); ``runtime``: what the compiled NNK engine's runtime takes of it (0 when it does
    not run); ``threads``: the chunks in flight, which share the rest.
    """

    total: int
    runtime: int = 0
    threads: int = 1

    @property
    def per_chunk(self) -> int:
        return (self.total - self.runtime) // max(self.threads, 1)

    def origin(self) -> str:
        """Where ``per_chunk`` comes from: ``512 MiB, less 104 MiB for ..., shared by 2 threads`` ("" if all of it)."""
        parts = [f"{_mib(self.total)} MiB"]
        if self.runtime:
            parts.append(f"less {_mib(self.runtime)} MiB for the compiled NNK engine's runtime")
        if self.threads > 1:
            parts.append(f"shared by {self.threads} threads")
        return ", ".join(parts) if len(parts) > 1 else ""

    def describe(self) -> str:
        """``204 MiB (512 MiB, less 104 MiB for the compiled NNK engine's runtime, shared by 2 threads)``."""
        origin = self.origin()
        return f"{_mib(self.per_chunk)} MiB" + (f" ({origin})" if origin else "")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f}" if n_bytes >= 2**20 else f"{n_bytes / 2**20:.2f}"


def default_chunk_size(k: int, dim: int, n_classes: int, budget: int | ChunkBudget | None = None) -> int:
    """Queries per chunk so that a chunk stays within ``budget`` (default ``CHUNK_MEMORY_BUDGET``) for any k.

    Goes down to one query per chunk; when one query alone needs more than the budget
    (k near 10,000 needs ~3 GiB for its k x k kernel block) it is an InputError saying
    how much, rather than a silent allocation far past the budget.
    """
    if not isinstance(budget, ChunkBudget):
        budget = ChunkBudget(CHUNK_MEMORY_BUDGET if budget is None else budget)
    per_query = query_bytes(k, dim, n_classes)
    if per_query > budget.per_chunk:
        raise InputError(
            f"k={k} needs {_size(per_query)} for a single query (the {k}x{k} kernel block and solver "
            f"work), more than the memory budget of a query chunk, {budget.describe()}",
            hint=f"use --k {largest_k_within(budget.per_chunk, dim, n_classes)} or less, or pass --chunk-size 1 "
            "to run anyway with that much memory",
        )
    return int(min(budget.per_chunk // per_query, 8192))


def query_by_query_chunk(k: int, dim: int, n_k: int = 1) -> int:
    """Queries per scoring chunk where the scoring's cost does not fall with the chunk's size.

    The exact re-ranking, k-NN voting and the compiled NNK engine cost the same per query
    in a chunk of 16 as of 1,000, so a chunk only needs enough queries to hide its fixed
    costs: ``QUERY_BY_QUERY_CHUNK_BYTES`` of neighbor vectors, and at least
    ``QUERY_BY_QUERY_MIN_CHUNK`` queries per k value scored (each k's voting, weights and
    counts cost a fraction of a millisecond per chunk whatever its size), up to
    ``QUERY_BY_QUERY_MAX_FLOOR`` and to ``QUERY_BY_QUERY_MAX_BYTES`` of neighbor vectors.
    Larger chunks only hold more memory (at k = 200, d = 784 a chunk of 111 queries held
    70 MiB of neighbor vectors, in each of the chunks in flight);
    the batched numpy engine, whose per-step cost is paid once per chunk, keeps the budget's
    chunk.
    """
    per_query = 4 * k * dim
    floor = min(QUERY_BY_QUERY_MIN_CHUNK * max(n_k, 1), QUERY_BY_QUERY_MAX_FLOOR)
    floor = max(1, min(floor, QUERY_BY_QUERY_MAX_BYTES // per_query))
    return max(floor, QUERY_BY_QUERY_CHUNK_BYTES // per_query)


def largest_k_within(budget: int, dim: int, n_classes: int) -> int:
    """The largest k whose one query fits ``budget`` bytes (``query_bytes``); 0 when not even k = 1."""
    if query_bytes(1, dim, n_classes) > budget:
        return 0
    lo, hi = 1, 1
    while query_bytes(hi * 2, dim, n_classes) <= budget:
        hi *= 2
    lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if query_bytes(mid, dim, n_classes) <= budget else (lo, mid)
    return lo


def chunk_budget(searcher: Searcher, opts: ScoringOptions, threads: int) -> ChunkBudget:
    """The memory budget of one scoring chunk of an evaluation with ``opts`` on ``threads`` threads."""
    # a sharded index asks for a smaller working memory beside its one loaded shard;
    # every worker holds one scoring sub-chunk: they share the budget
    total = min(CHUNK_MEMORY_BUDGET, searcher.chunk_budget)
    runtime = 0
    if solves_cosine_nnk(opts) and not searcher.on_device and compiled.expected():
        # the compiled NNK engine's runtime lives beside the chunks: the budget covers both
        runtime = total - max(total - compiled.RUNTIME_BYTES, total // 2)
    return ChunkBudget(total, runtime, threads)


def largest_k(searcher: Searcher, opts: ScoringOptions, *, dim: int, n_classes: int, threads: int) -> int | None:
    """The largest k the chunk budget allows (``chunk_budget``); None when ``--chunk-size`` is given (no bound)."""
    if opts.chunk_size:
        return None
    return largest_k_within(chunk_budget(searcher, opts, threads).per_chunk, dim, n_classes)


def plan_chunks(
    searcher: Searcher, opts: ScoringOptions, *, dim: int, n_classes: int, threads: int, n_rows: int
) -> tuple[int, int]:
    """``(chunk, block)``: queries per scoring chunk, and per search block, of an evaluation of ``n_rows``.

    Large search blocks for the search's matrix products; a searcher that returns the
    neighbor vectors with the ids (shards, GPU: not ``two_stage``) searches chunk by chunk,
    which keeps the memory bound.
    """
    from nnkcli.evaluation.pipeline import SEARCH_BLOCK, balanced_block, searches_in_flight

    k_max = opts.k_values[-1]
    chunk = opts.chunk_size or default_chunk_size(k_max, dim, n_classes, budget=chunk_budget(searcher, opts, threads))
    compiled_nnk = solves_cosine_nnk(opts) and not searcher.on_device and compiled.expected()
    split = searcher.two_stage
    # every method scores on the CPU at a cost per query (k-NN, compiled NNK): small chunks do
    if not opts.chunk_size and split and not searcher.on_device and ("nnk" not in opts.methods or compiled_nnk):
        chunk = min(chunk, query_by_query_chunk(k_max, dim, len(opts.k_values)))
    if not split:
        return chunk, min(chunk, max(n_rows, 1))
    per_block = SEARCH_IDS_BUDGET // searches_in_flight(threads)
    block = max(chunk, min(SEARCH_BLOCK, per_block // (12 * (k_max + 1) + 4 * dim)))
    return chunk, balanced_block(n_rows, block, threads)  # the last searches end together
