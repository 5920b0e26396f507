"""Few-shot evaluation: NNK and weighted k-NN of the query split against a few train rows per class.

``fewshot(store, per_class=(1, 2, 5, 10), tries=5)`` draws, for each n and try, n labelled
train rows of every class (``nnkcli.evaluation.subsets.balanced_draw``: seeded by
``(seed, n, try)`` only), and scores every query against those rows alone; ``subset_file``
scores one given subset instead (SimCLR's ImageNet 1 % / 10 % files). Each subset is searched
directly — an exact in-memory flat index of its rows, or a matmul on the device with
``backend="torch"`` — so no index over the whole train split is built or read; the queries
stream through the same pipeline and scoring code as ``classify`` (``evaluate_chunks``: the
float64 re-ranking with ties broken by train row, the DINO k-NN vote, the exact NNK solve and
its KKT certificate), in chunks of bounded memory.

k is capped at the subset's rows (``k_used``). Per (n, method, k[, T]) the document holds the
mean over tries of top-1/top-5, their standard deviation across tries (ddof = 1), each try's
numbers and an interval of the mean over both the draws and the queries
(``nnkcli.numerics.stats.draws_and_queries_interval``; one try: Wilson, the queries only);
``subsets`` records each try's train rows (and sample ids) so anyone can recompute a try.

Examples
--------
>>> result = fewshot(demo_store, per_class=[2], tries=2, k=[3, 50], methods="knn")   # demo_store: a store's path
>>> [(r["per_class"], r["k"], r["k_used"]) for r in result.rows()]
[(2, 3, 3), (2, 50, 6)]
>>> len(result["subsets"]), result["subsets"][0]["n_rows"]   # its 3 classes, 2 rows each, in each of 2 tries
(2, 6)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnkcli.errors import InputError, OptionError, SettingName
from nnkcli.evaluation.options import DataOptions, ScoringOptions, apply_protocol, resolve
from nnkcli.evaluation.results import EvaluationResult, flat_row
from nnkcli.evaluation.setup import with_k

logger = logging.getLogger("nnkcli")

SCHEMA_VERSION = 1
#: the default draws: n train rows per class, and draws per n
DEFAULT_PER_CLASS = (1, 2, 5, 10)
DEFAULT_TRIES = 5
#: the default k: DINOv2's eval/knn.py (--nb_knn 10 20 100 200)
DEFAULT_K_SPEC = "10,20,100,200"
_TIMING_KEYS = ("read_s", "search_s", "rerank_s", "knn_s", "nnk_s")


class FewshotResult(EvaluationResult):
    """What :func:`fewshot` returns: the document, one summary row per (n, method, k[, T]), and per-try rows.

    ``to_dict()`` is the document (``--format json``), ``rows()`` the summary rows flattened
    (``per_class`` first; intervals as ``X_ci_low``/``X_ci_high``; the per-try lists left out),
    ``try_rows()`` one row per try, ``to_pandas()`` a DataFrame of ``rows()``.
    """

    def rows(self) -> list[dict]:
        first = ("per_class", "method", "k", "k_used", "temperature")
        return [flat_row(row, first, lambda key, value: key.endswith("_tries")) for row in self.results]

    def try_rows(self) -> list[dict]:
        """One flat dict per (n, try, method, k[, T]): ``per_class``, ``try``, ``method``, ``k``, ``k_used``,
        ``temperature``, ``top1``, ``top5`` (%)."""
        out = []
        for row in self.results:
            for t, (top1, top5) in enumerate(zip(row["top1_tries"], row["top5_tries"], strict=True)):
                out.append(
                    {
                        "per_class": row["per_class"],
                        "try": t,
                        **{key: row.get(key) for key in ("method", "k", "k_used", "temperature")},
                        "top1": top1,
                        "top5": top5,
                    }
                )
        return out


def per_class_counts(value, name: str | SettingName = "per_class") -> tuple[int, ...]:
    """An int >= 1, a comma list (``"1,2,5,10"``) or a sequence -> sorted distinct ints >= 1."""
    parts = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    out = set()
    for part in parts:
        try:
            n = int(part.strip()) if isinstance(part, str) else part
            if isinstance(n, bool) or int(n) != n:
                raise ValueError
        except (TypeError, ValueError):
            reason = "expected an integer or a comma list of integers"
            raise OptionError(name, value, reason, hint="e.g. 1,2,5,10") from None
        if n < 1:
            raise OptionError(name, value, "every count must be >= 1")
        out.add(int(n))
    if not out:
        raise OptionError(name, value, "no count given", hint="e.g. 1,2,5,10")
    return tuple(sorted(out))


def fewshot(
    store_path: str | os.PathLike,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    k: int | str | Sequence[int] | None = None,
    per_class: int | str | Sequence[int] = DEFAULT_PER_CLASS,
    tries: int = DEFAULT_TRIES,
    seed: int = 0,
    subset_file: str | os.PathLike | None = None,
    progress_factory: Callable | None = None,
    **settings,
) -> FewshotResult:
    """Top-1/top-5 of NNK and weighted k-NN when only a few labelled train rows per class are known.

    Parameters
    ----------
    store_path : path-like
        The feature store.
    options : ScoringOptions, optional
        How queries are scored (methods, kernel, temperature, solver, threads, backend, ...).
    data : DataOptions, optional
        The train and query splits (no index: each subset is searched directly).
    k : int, str or sequence of int, optional
        The k values (a ``--k`` SPEC); default ``"10,20,100,200"`` (DINOv2's), or the ``protocol``'s.
        Each is capped at the subset's rows (``k_used``).
    per_class : int, str or sequence of int, default=(1, 2, 5, 10)
        Train rows drawn per class.
    tries : int, default=5
        Draws per ``per_class`` value (each seeded by ``(seed, n, try)``).
    seed : int, default=0
    subset_file : path-like, optional
        Score this one subset instead of the draws (``per_class``, ``tries`` and ``seed`` unused):
        one train row index or sample id a line (see ``nnkcli.evaluation.subsets.match_entries``).
    progress_factory : callable, optional
        ``progress_factory(total, description)``: a context manager yielding ``advance(n)``.
    **settings
        Any other field of ``ScoringOptions`` or ``DataOptions`` (``methods="knn"``, ``threads=2``).

    Returns
    -------
    FewshotResult
        ``.to_dict()`` the document (accuracies in %), ``.rows()``, ``.try_rows()``, ``.to_pandas()``.

    Raises
    ------
    OptionError
        A bad ``per_class``, ``tries`` or ``seed``; ``exclude_self``, ``shard`` or ``index_path`` given.
    InputError
        The query split has no labels or is the train split; a subset file names unknown or
        unlabelled rows; the splits differ in dimension.
    """
    from nnkcli.settings import count
    from nnkcli.settings import seed as check_seed

    keywords = apply_protocol(with_k(settings, k))
    if options is None and "k_values" not in keywords:
        keywords["k_values"] = DEFAULT_K_SPEC
    options, data = resolve(options, data, keywords)
    for field, given in (
        ("exclude_self", options.exclude_self),
        ("shard", data.shard),
        ("index_path", data.index_path),
    ):
        if given:
            cls = ScoringOptions if field == "exclude_self" else DataOptions
            raise OptionError(cls.declared(field).names, given, "fewshot searches each subset directly, all queries")
    if subset_file is None:
        per_class = per_class_counts(per_class, SettingName("per_class", "--per-class"))
        tries = count(tries, SettingName("tries", "--tries"))
        seed = check_seed(seed, SettingName("seed", "--seed"))
    started = time.perf_counter()
    from nnkcli.storage.store import FeatureStore

    with FeatureStore(store_path) as store:
        return _run(store, store_path, options, data, per_class, tries, seed, subset_file, progress_factory, started)


def _open(store, data: DataOptions):
    from nnkcli.evaluation.setup import split_labels
    from nnkcli.storage.provenance import check_provenance

    train, query = store.split(data.train_split), store.split(data.query_split)
    if train.name == query.name:
        raise InputError(
            f"the query split is the train split '{train.name}': its queries would find themselves in the subset",
            hint="pass another --query-split",
        )
    if train.dim != query.dim:
        raise InputError(
            f"query split '{query.name}' has dimension {query.dim} but train split '{train.name}' has {train.dim}",
            hint="both splits must come from the same model",
        )
    warnings = check_provenance(train, query, strict=data.strict_provenance)
    for text in warnings:
        logger.warning(text)
    train_labels, query_labels, class_names = split_labels(store, train, query)
    if not (query_labels >= 0).any():
        raise InputError(f"query split '{query.name}' has no labels: there is no accuracy to measure")
    return train, query, train_labels, query_labels, class_names, warnings


def _subset_from_file(path, train, train_labels: np.ndarray) -> np.ndarray:
    from nnkcli.evaluation.subsets import match_entries, read_subset_file

    rows = match_entries(read_subset_file(path), int(train.n), train.ids, source=str(path))
    unique = np.unique(rows)
    if unique.size < rows.size:
        logger.warning(f"{path}: {rows.size - unique.size} duplicate entries ignored (each row is taken once)")
    unlabelled = unique[train_labels[unique] < 0]
    if unlabelled.size:
        raise InputError(
            f"{path}: {unlabelled.size} entries name unlabelled train rows (first: row {int(unlabelled[0])})",
            hint="a few-shot subset needs labelled rows",
        )
    return unique


def _run(store, store_path, options, data, per_class, tries, seed, subset_file, progress_factory, started):
    from nnkcli import index as nnk_index
    from nnkcli.evaluation.scoring import solves_cosine_nnk
    from nnkcli.evaluation.searchers import resolve_search
    from nnkcli.evaluation.subsets import balanced_draw, draw_seed, short_classes
    from nnkcli.numerics import compiled

    train, query, train_labels, query_labels, class_names, warnings = _open(store, data)
    search = resolve_search((options.backend, options.device, options.fp16))
    nnk_index.set_threads(options.threads)
    if solves_cosine_nnk(options):
        compiled.warm_up()
    ids = train.ids
    subsets: list[dict] = []
    if subset_file is not None:
        rows = _subset_from_file(subset_file, train, train_labels)
        subsets.append({"per_class": None, "try": 0, "seed": None, "rows": rows})
        plan: list[int | None] = [None]
        tries = 1
    else:
        plan = list(per_class)
        for n in per_class:
            short = short_classes(train_labels, n, class_names)
            if short:
                listed = ", ".join(f"{name!r} ({c})" for name, c in list(short.items())[:5])
                more = f" and {len(short) - 5} more" if len(short) > 5 else ""
                logger.warning(f"{len(short)} classes have fewer than {n} train rows, all taken: {listed}{more}")
            for t in range(tries):
                rows = balanced_draw(train_labels, n, seed, t)
                if rows.size == 0:
                    raise InputError(f"train split '{train.name}' has no labelled rows to draw from")
                subsets.append({"per_class": n, "try": t, "seed": draw_seed(seed, n, t), "rows": rows})
                subsets[-1]["short_classes"] = short
    timing: dict[str, Any] = dict.fromkeys(_TIMING_KEYS, 0.0)
    timing.update(nnk_fallbacks=0, subset_s=0.0)
    total = len(subsets) * int(query.n)
    context = (train, query, train_labels, query_labels, class_names, options, search, timing, store_path, warnings)
    with progress_factory(total, "few-shot") if progress_factory else contextlib.nullcontext() as advance:
        scored = [_score_subset(sub, *context, advance) for sub in subsets]
    from nnkcli.evaluation.fewshot_document import fewshot_document

    doc = fewshot_document(
        store_path=store_path,
        train=train,
        query=query,
        train_labels=train_labels,
        query_labels=query_labels,
        class_names=class_names,
        options=options,
        plan=plan,
        tries=tries,
        seed=seed,
        subset_file=subset_file,
        subsets=subsets,
        scored=scored,
        ids=ids,
        backend=search,
        warnings=warnings,
    )
    timing = {key: round(v, 4) if isinstance(v, float) else v for key, v in timing.items()}
    timing["total_s"] = round(time.perf_counter() - started, 4)
    doc["timing"] = timing
    return FewshotResult(doc)


def _score_subset(
    sub, train, query, train_labels, query_labels, class_names, options, search, timing, store_path, warnings, progress
) -> dict:
    """One subset scored: per result key ``(method, k_used, T)``, the labelled queries' top-1 and top-5 hits."""
    from nnkcli.evaluation.arrays import ArraySplit
    from nnkcli.evaluation.searchers import memory_search
    from nnkcli.evaluation.setup import Evaluation
    from nnkcli.evaluation.streaming import evaluate_chunks

    t0 = time.perf_counter()
    rows = sub["rows"]
    subset = ArraySplit(train.name, train.read_rows(rows), train_labels[rows])
    backend, device, fp16 = search
    searcher, index, info = memory_search(subset, backend, device, fp16)
    timing["subset_s"] += time.perf_counter() - t0
    ev = Evaluation(
        train=subset,
        query=query,
        train_labels=subset.labels,
        query_labels=query_labels,
        class_names=class_names,
        n_classes=len(class_names),
        searcher=searcher,
        index=index,
        index_info=info,
        backend=backend,
        device=device,
        fp16=fp16,
        store_path=store_path,
        warnings=warnings,
    )
    used = tuple(sorted({min(k, int(rows.size)) for k in options.k_values}))
    with ev:
        accs, run = evaluate_chunks(ev, options.replace(k_values=used), progress=progress, keep_hits=True)
    for key in (*_TIMING_KEYS, "nnk_fallbacks"):
        timing[key] += run[key]
    for key in ("threads", "chunk_size", "search_block", "nnk_engine"):
        if key in run:
            timing[key] = run[key]
    info = {**info, "over": "each subset's rows"}
    out = {}
    for acc in accs.values():
        hit1, hit5 = acc.hits()
        out[(acc.method, acc.k, acc.temperature)] = (hit1, hit5)
    return {"hits": out, "n_rows": int(rows.size), "index": info}
