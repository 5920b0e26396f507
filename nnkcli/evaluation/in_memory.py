"""Evaluation on arrays held in memory: a sweep in a training loop or a notebook, no file written.

``evaluate_features`` runs the same ``evaluate_chunks`` / ``score_chunk`` code as
``nnkcli.sweep`` on an :meth:`Evaluation.from_arrays <nnkcli.evaluation.setup.Evaluation.from_arrays>`
(numpy arrays, or torch tensors converted once): the train vectors are L2-normalised into an
in-memory flat (exact) index, exactly as ``nnk sweep`` builds one when no saved index exists,
so both give the same neighbors and scores. (scikit-learn estimators over the same set-up:
``nnkcli.estimators``.)
"""

from __future__ import annotations

from collections.abc import Sequence

from nnkcli.errors import InputError
from nnkcli.evaluation.results import SweepResult
from nnkcli.evaluation.setup import Evaluation, with_k


def evaluate_features(
    train_features,
    train_labels,
    query_features,
    query_labels=None,
    options=None,
    *,
    class_names: Sequence[str] | None = None,
    k: int | str | Sequence[int] | None = None,
    **settings,
) -> SweepResult:
    """Sweep NNK and weighted k-NN over k on arrays in memory (a training loop, a notebook).

    The same computation and the same result document as :func:`nnkcli.sweep` on a store
    holding these arrays (``"store"`` is None and the index is an in-memory flat one),
    intervals and the best k of each method included; nothing is written to disk.

    Parameters
    ----------
    train_features : array-like or torch tensor, shape (n_train, d)
    train_labels : array-like or torch tensor, shape (n_train,)
        Integer class ids (``-1`` = unlabelled: never voted for) or strings.
    query_features : array-like or torch tensor, shape (n_query, d)
    query_labels : array-like, shape (n_query,), optional
        None: predictions only (accuracies are NaN).
    options : ScoringOptions, optional
        How queries are scored, as ``sweep``'s; ``**settings`` (any of its fields:
        ``methods``, ``kernel``, ``temperature``, ``weighting``, ``tol``, ``chunk_size``,
        ``threads``, ``confidence``, ``alpha``, ``backend``/``device``/``fp16`` for the
        torch (GPU) search path ...) override it.
    class_names : sequence of str, optional
        Names of the integer class ids.
    k : int, str or sequence of int, optional
        The k values: one k, a ``--k`` SPEC (``"10..200"``) or a list. Default (with neither
        ``k`` nor ``options``): ``"10..200"``, as ``nnk sweep``.

    Returns
    -------
    SweepResult
        ``.to_dict()`` is the JSON-able document; ``.rows()``, ``.best`` and ``.results`` as ``sweep``'s.
    """
    from nnkcli.evaluation.options import DEFAULT_K_SPEC, ScoringOptions, apply_protocol
    from nnkcli.evaluation.sweeps import sweep_evaluation

    settings = apply_protocol(with_k(settings, k))  # a preset fills what is not given, as sweep's
    if options is None and "k_values" not in settings:
        settings["k_values"] = DEFAULT_K_SPEC
    options = options if options is not None else ScoringOptions()
    if settings:
        options = options.replace(**settings)
    if query_features is None:
        raise InputError("query_features is None", hint="give the features to classify")
    search = (options.backend, options.device, options.fp16)
    with Evaluation.from_arrays(
        train_features,
        train_labels,
        query_features,
        query_labels,
        class_names=class_names,
        threads=options.threads,
        search=search,
        search_kernel=options.search_kernel,
    ) as ev:
        return sweep_evaluation(ev, options)
