"""Accuracy versus k for NNK and weighted kNN from one search per query chunk.

Each chunk is searched once at max(k); every smaller k uses the leading (most
similar) neighbours of that search. For NNK with the cosine kernel the kernel
block of every k is the leading block of the one built at max(k), and each k's
solve is warm-started from the previous k's support. The result at each k is
exactly what ``classify`` gives at that k (the same code computes both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nnkcli.evaluation.classification import METHODS, _document, check_labelled, open_evaluation, run
from nnkcli.errors import InputError
from nnkcli.numerics.stats import mcnemar_exact

DEFAULT_ALPHA = 0.05

_RANGE = re.compile(r"^(\d+)\.\.(\d+)(?::(\d+))?$")
_INT = re.compile(r"^\d+$")
MAX_K_VALUES = 10_000


def parse_k_spec(spec: str) -> list[int]:
    """Parse a k specification into a sorted list of distinct positive ints.

    Grammar (comma-separated tokens, mixed freely)::

        N         one value
        A..B      A, 2A, 3A, ... up to B       ("10..200" -> 10, 20, ..., 200)
        A..B:S    A, A+S, A+2S, ... up to B    ("1..9:4" -> 1, 5, 9)

    Raises
    ------
    InputError
        naming the first bad token.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty k specification", hint="e.g. --k 10..200 or --k 10,20,50")
    values: set[int] = set()
    for raw in spec.split(","):
        token = raw.strip()
        m = _RANGE.match(token)
        if _INT.match(token):
            new = [int(token)]
        elif m:
            a, b = int(m.group(1)), int(m.group(2))
            step = int(m.group(3)) if m.group(3) is not None else a
            if a < 1 or step < 1 or b < a:
                raise InputError(
                    f"bad k range {token!r}: need 1 <= A <= B and a step >= 1",
                    hint="e.g. 10..200 (10, 20, ..., 200) or 1..100:5",
                )
            if (b - a) // step + 1 > MAX_K_VALUES:
                raise InputError(f"k range {token!r} has more than {MAX_K_VALUES} values", hint="use a larger step")
            new = list(range(a, b + 1, step))
        else:
            raise InputError(
                f"bad k token {token!r} in {spec!r}",
                hint="use integers, A..B (multiples of A up to B), A..B:S, or comma lists like 1,5,10..200:10",
            )
        if any(v < 1 for v in new):
            raise InputError(f"bad k token {token!r}: k must be >= 1")
        values.update(new)
    return sorted(values)


@dataclass
class SweepResult:
    """The sweep's JSON-able document (see :meth:`to_dict`)."""

    document: dict

    def to_dict(self) -> dict:
        return self.document

    @property
    def results(self) -> list[dict]:
        return self.document["results"]

    @property
    def best(self) -> dict:
        return self.document["best"]


def best_per_method(results: Sequence[dict], hits: dict | None = None, alpha: float = DEFAULT_ALPHA) -> dict:
    """Per method, the row with the highest top-1 (ties: the smaller k, which is cheaper).

    With ``hits`` ((method, k) -> per-query top-1 correctness, the same queries for
    every k), each best also says which other k are *not* significantly worse than it:
    McNemar's exact test of that k against the best k on the same queries, p >= ``alpha``
    (``tied_k``); ``recommended_k`` is the smallest k among the best and those, the
    cheapest k that the data cannot tell apart from the best; ``significant`` is true
    when no other k is tied.
    """
    best: dict = {}
    for row in results:
        top1 = row.get("top1")
        if top1 is None or top1 != top1:
            continue
        current = best.get(row["method"])
        if current is None or top1 > current["top1"] or (top1 == current["top1"] and row["k"] < current["k"]):
            best[row["method"]] = {"k": row["k"], "top1": top1, "top5": row.get("top5")}
            best[row["method"]].update({key: row[key] for key in ("top1_ci", "top5_ci") if key in row})
    if hits is None:
        return best
    for method, b in best.items():
        ref = hits[(method, b["k"])]
        tied = []
        for row in results:
            if row["method"] != method or row["k"] == b["k"]:
                continue
            other = hits[(method, row["k"])]
            p = mcnemar_exact(int((ref & ~other).sum()), int((other & ~ref).sum()))
            if p >= alpha:
                tied.append(row["k"])
        b["tied_k"] = tied
        b["recommended_k"] = min([b["k"], *tied])
        b["significant"] = not tied
        b["alpha"] = alpha
    return best


def sweep(
    store_path: str | os.PathLike,
    *,
    k_values: Sequence[int],
    methods: str | Sequence[str] = METHODS,
    train_split: str = "train",
    query_split: str = "val",
    index_path: str | os.PathLike | None = None,
    rebuild_index: bool = False,
    kernel: str = "cosine",
    temperature: float = 0.07,
    weighting: str = "exp",
    chunk_size: int | None = None,
    exclude_self: bool = False,
    threads: int | None = None,
    confidence: float = 0.95,
    alpha: float = DEFAULT_ALPHA,
    gate_requested: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_factory: Callable | None = None,
) -> SweepResult:
    """Evaluate every k in ``k_values`` for every method from one search per chunk.

    Results are ordered by method, then k. ``best`` holds each method's best k and the
    k values not significantly worse than it at ``alpha`` (see :func:`best_per_method`).
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha must be in (0, 1), got {alpha:g}", hint="e.g. 0.05")
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values:
        raise InputError("no k values to sweep", hint="e.g. --k 10..200")
    opts, ev = open_evaluation(
        store_path, methods=methods, train_split=train_split, query_split=query_split, index_path=index_path,
        rebuild_index=rebuild_index, kernel=kernel, temperature=temperature, weighting=weighting,
        chunk_size=chunk_size, exclude_self=exclude_self, threads=threads, progress_factory=progress_factory,
        confidence=confidence,
    )
    with ev:
        check_labelled(ev, gate_requested)
        if progress is None and progress_factory is not None:
            with progress_factory(ev.query.n, "sweeping") as advance:
                accs, timing = run(ev, k_values, opts, progress=advance, keep_hits=True)
        else:
            accs, timing = run(ev, k_values, opts, progress=progress, keep_hits=True)
        doc = _document(ev, opts, accs, timing, per_class=False)
        hits = {key: acc.hits()[0] for key, acc in accs.items()}
    doc["k_values"] = k_values
    doc["results"] = sorted(doc["results"], key=lambda r: (opts.methods.index(r["method"]), r["k"]))
    doc["best"] = best_per_method(doc["results"], hits, alpha)
    return SweepResult(doc)
