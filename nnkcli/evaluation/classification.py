"""``classify``: NNK and weighted-kNN accuracy of a query split at one k, with an optional predictions file.

The evaluation itself is split by job: ``nnkcli.evaluation.setup`` opens the store and its
index, ``nnkcli.evaluation.streaming`` streams the query split through
``nnkcli.evaluation.scoring`` within the memory bound of ``nnkcli.evaluation.memory``, and
``nnkcli.evaluation.documents`` builds the result document. ``nnkcli.evaluation.sweeps``
evaluates many k from the same search.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nnkcli.evaluation.documents import result_document, whole_run_timing
from nnkcli.evaluation.options import DataOptions, ScoringOptions, check_shard_output, resolve_one_k
from nnkcli.evaluation.results import ClassifyResult
from nnkcli.evaluation.setup import check_labelled, open_evaluation, with_k
from nnkcli.evaluation.streaming import evaluate_chunks

if TYPE_CHECKING:
    from nnkcli.evaluation.partials import PartialWriter
    from nnkcli.evaluation.predictions import PredictionWriter


def classify(
    store_path: str | os.PathLike,
    options: ScoringOptions | None = None,
    *,
    data: DataOptions | None = None,
    k: int | str | Sequence[int] | None = None,
    per_class: bool = False,
    predictions_path: str | os.PathLike | None = None,
    gate_requested: bool = False,
    progress_factory: Callable | None = None,
    **settings,
) -> ClassifyResult:
    """Evaluate NNK and/or weighted kNN at one k; returns the result (``.to_dict()``: the JSON document).

    Parameters
    ----------
    store_path : path-like
        The feature store.
    options : ScoringOptions, optional
        How queries are scored; its ``k_values`` must hold one k (default: ``k=50``).
    data : DataOptions, optional
        Splits and saved index (default: train vs val, the saved index if present).
    k : int, str or sequence of int, optional
        The one k (``10``, ``"10"`` or ``[10]``), over ``options``' (default 50, or the ``protocol``'s).
    per_class : bool
        Add per-class top-1 to each result.
    predictions_path : path-like, optional
        Write per-query results to this HDF5 file (atomically).
    gate_requested : bool
        A query split without labels is then an error (there is no accuracy to gate).
    progress_factory : callable, optional
        ``progress_factory(total, description)``: a context manager yielding ``advance(n)``.
    **settings
        Any other field of ``ScoringOptions`` or ``DataOptions`` (``methods="knn"``,
        ``query_split="test"`` ...), applied over ``options``/``data``.

    Returns
    -------
    ClassifyResult
        ``.to_dict()`` the document (accuracies in %), ``.rows()`` one flat dict per
        method, ``.to_pandas()``.

    See ``nnkcli.evaluation.memory`` for the memory bound.

    Examples
    --------
    >>> result = classify(demo_store, k=10, methods="knn")   # demo_store: a feature store's path
    >>> [(r["method"], r["k"], r["n_queries"]) for r in result.rows()]
    [('knn', 10, 30)]
    >>> doc = result.to_dict()
    >>> doc["parameters"]["k_values"], doc["parameters"]["methods"]
    ([10], ['knn'])
    """
    if predictions_path is not None:
        from nnkcli.storage.atomic import check_can_create

        check_can_create(predictions_path, "predictions")  # before the index is loaded or built
    options, data = resolve_one_k(options, data, with_k(settings, k), command="classify", protocol=True)
    (k,) = options.k_values
    check_shard_output(data.shard, predictions_path, output_name="predictions_path")
    started = time.perf_counter()
    ev = open_evaluation(store_path, options, data, progress_factory)
    opened_s = time.perf_counter() - started
    with ev:
        check_labelled(ev, gate_requested)
        ev.check_k(options)  # before the predictions file is created (evaluate_chunks checks again, cheaply)
        writer: PartialWriter | PredictionWriter | None = None
        try:  # the writer is made inside: a signal just after it is made still aborts it
            if predictions_path is not None and data.shard is not None:
                from nnkcli.evaluation.partials import partial_writer

                writer = partial_writer(predictions_path, ev, options, "classify", per_class=per_class)
            elif predictions_path is not None:
                from nnkcli.evaluation.predictions import PredictionWriter

                writer = PredictionWriter(predictions_path, ev, options)
            on_chunk = writer.write if writer is not None else None
            if progress_factory is not None:
                with progress_factory(ev.rows[1] - ev.rows[0], "classifying") as advance:
                    accs, timing = evaluate_chunks(ev, options, progress=advance, on_chunk=on_chunk)
            else:
                accs, timing = evaluate_chunks(ev, options, on_chunk=on_chunk)
            # built once (every row's bootstrap interval): the file keeps this document's parameters
            doc = result_document(ev, options, accs, timing, per_class, k=k, predictions_path=predictions_path)
            whole_run_timing(doc["timing"], started=started, opened_s=opened_s)
            if writer is not None:
                writer.commit(doc)
        except BaseException:
            if writer is not None:
                writer.abort()  # nothing half-written is left behind, an old file is kept
            raise
        return ClassifyResult(doc)
