"""Evaluation on arrays held in memory: the seam between the streaming core and a store.

:class:`Evaluation` opens a store and its saved index; :class:`InMemoryEvaluation` is the
same set-up built from arrays (numpy, or torch tensors converted once), so the same
``evaluate_chunks`` / ``score_chunk`` code scores queries in a training loop, a notebook or a
scikit-learn estimator without writing an HDF5 file first. The train vectors are
L2-normalised into an in-memory flat (exact) index, exactly as ``nnk classify`` builds
one when no saved index exists, so both paths give the same neighbors and scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from nnkcli.errors import InputError
from nnkcli.storage.checks import tensor_to_numpy
from nnkcli.evaluation.classification import Evaluation


def to_numpy(values, what: str) -> np.ndarray:
    """A numpy array from an array-like or a torch tensor (moved to the CPU once, no torch import)."""
    try:
        return np.asarray(tensor_to_numpy(values))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} cannot be read as an array: {exc}") from None


class ArraySplit:
    """An in-memory split: what the evaluation reads of a store split.

    Parameters
    ----------
    name : str
    features : ndarray, shape (n, d), real
    labels : ndarray, shape (n,), int64 class ids (-1 = unlabelled)
    """

    def __init__(self, name: str, features: np.ndarray, labels: np.ndarray):
        self.name = name
        self.features = features
        self.labels = labels
        self.n, self.dim = int(features.shape[0]), int(features.shape[1])
        # nothing persists an in-memory index, so nothing needs a content hash of it
        self.content_sha256 = "in-memory"
        self.ids = None  # sample ids: none for arrays

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.features[start:stop]

    def iter_chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = max(1, int(chunk_rows or self.n or 1))
        for start in range(0, self.n, step):
            yield start, self.features[start : start + step]


def unit_rows(x: np.ndarray, *, keep_zero_rows: bool = False) -> np.ndarray:
    """Rows L2-normalised in float32 (a new array), exactly as the store path normalises them.

    ``keep_zero_rows``: an all-zero row stays zero (cosine similarity 0 to every row, the
    convention of scikit-learn's cosine metric) instead of being an error.
    """
    from nnkcli.numerics.kernels import normalize_rows

    if not keep_zero_rows:
        return normalize_rows(x)
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 0
    x[nonzero] /= norms[nonzero, None]
    return x


def check_features(values, what: str) -> np.ndarray:
    """(n, d) finite real features as an array (float16/32/64 kept, integers become float32)."""
    x = to_numpy(values, what)
    if x.dtype.kind not in "biuf":
        raise InputError(f"{what} have the unsupported dtype {x.dtype}; expected real numbers",
                         hint="convert them to a float array first")
    if x.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (n, d); got shape {x.shape}",
                         hint="reshape to (n_samples, feature_dim)")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if x.shape[0] and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InputError(f"{what} contain NaN or Inf (first: row {row})", hint="fix or drop those rows")
    return x


def encode_labels(train_labels, query_labels, class_names: Sequence[str] | None):
    """Class ids for both label arrays, and the class names.

    Integer labels are class ids already (``-1`` = unlabelled, ``class_names`` names them);
    string labels are mapped to ids in sorted order of the names found in either array
    (or in the order of ``class_names`` when given).

    Returns
    -------
    train_ids, query_ids : ndarray of int64 (query_ids is None when query_labels is)
    class_names : list of str
    """
    arrays = [to_numpy(train_labels, "train labels")]
    if query_labels is not None:
        arrays.append(to_numpy(query_labels, "query labels"))
    for name, a in zip(("train labels", "query labels"), arrays):
        if a.ndim != 1:
            raise InputError(f"{name} must be 1-D, got shape {a.shape}")
    if all(a.dtype.kind in "iub" for a in arrays):
        ids = [a.astype(np.int64) for a in arrays]
        bad = [int(a.min()) for a in ids if a.size and a.min() < -1]
        if bad:
            raise InputError(f"labels must be class ids >= 0 (or -1 = unlabelled), got {bad[0]}")
        top = max([int(a.max(initial=-1)) for a in ids])
        names = list(class_names) if class_names is not None else [str(c) for c in range(top + 1)]
        if top >= len(names):
            raise InputError(f"label {top} has no name: class_names holds {len(names)} names",
                             hint="give one name per class id")
    elif all(a.dtype.kind in "US" for a in arrays):
        strings = [a.astype(str) for a in arrays]
        names = list(class_names) if class_names is not None else sorted(set().union(*map(set, strings)))
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted(set().union(*map(set, strings)) - lookup.keys())
        if unknown:
            raise InputError(f"label {unknown[0]!r} is not in class_names", hint="give every class a name")
        ids = [np.array([lookup[s] for s in a], dtype=np.int64) for a in strings]
    else:
        raise InputError("labels must be integers (class ids) or strings, the same kind for train and query",
                         hint=f"got dtypes {', '.join(str(a.dtype) for a in arrays)}")
    return ids[0], (ids[1] if query_labels is not None else None), names


class InMemoryEvaluation(Evaluation):
    """:class:`Evaluation` over arrays: same attributes, no store, an in-memory flat index.

    Parameters
    ----------
    train_features : array-like, shape (n_train, d)
    train_labels : array-like, shape (n_train,), class ids (-1 = unlabelled)
    query_features : array-like, shape (n_query, d), optional (None: the index only, for estimators)
    query_labels : array-like, shape (n_query,), optional (None: unlabelled queries)
    class_names : sequence of str, optional
    threads : int, optional
    keep_zero_rows : bool, default=False
        Accept all-zero train rows (similar to nothing) instead of refusing them.
    """

    def __init__(self, train_features, train_labels, query_features=None, query_labels=None, *,
                 class_names: Sequence[str] | None = None, threads: int | None = None,
                 keep_zero_rows: bool = False, search: tuple[str | None, str, bool] = (None, "cpu", False)):
        from nnkcli import index as nnk_index
        from nnkcli.evaluation.torch_backend import resolve_backend

        # (backend, device, fp16) -> the backend and device actually used, as Evaluation does
        self.backend, self.device = resolve_backend(*search)
        self.fp16 = bool(search[2])
        if self.backend == "torch" and keep_zero_rows:
            raise InputError("all-zero rows are kept only by the faiss backend", hint="use backend='faiss'")

        xt = check_features(train_features, "train features")
        if xt.shape[0] < 1:
            raise InputError("train features are empty")
        if query_features is None:
            xq = np.zeros((0, xt.shape[1]), dtype=np.float32)
        else:
            xq = check_features(query_features, "query features")
        if xq.shape[1] != xt.shape[1]:
            raise InputError(f"query features have dimension {xq.shape[1]} but train features have {xt.shape[1]}",
                             hint="both must come from the same model")
        yt, yq_ids, names = encode_labels(train_labels, query_labels, class_names)
        if yq_ids is None:  # unlabelled queries: predictions only
            yq_ids = np.full(len(xq), -1, dtype=np.int64)
        for what, x, y in (("train", xt, yt), ("query", xq, yq_ids)):
            if len(y) != len(x):
                raise InputError(f"{what} features have {len(x)} rows but {what} labels have {len(y)}",
                                 hint="give one label per feature row")
        self.store_path = None
        self.store = None
        self.train = ArraySplit("train", xt, yt)
        self.query = ArraySplit("val", xq, yq_ids)  # the names of sweep's default splits
        self.train_labels, self.query_labels = yt, yq_ids
        self.class_names = names
        self.n_classes = max(len(names), 1)
        self.shard, self.rows = None, (0, len(xq))  # every query row (no query shards in memory)
        nnk_index.set_threads(threads)
        if self.backend == "torch":  # the GPU path: exact search by matmul on the device
            from nnkcli.evaluation.torch_backend import TorchSearcher

            self.index = None
            self.index_info = {"path": None, "built_in_memory": True, "rebuilt": False, "type": "flat",
                               "backend": "torch", "device": self.device, "fp16": self.fp16}
            self._searcher = TorchSearcher(self.train, device=self.device, fp16=self.fp16)
            return
        self.index = nnk_index.flat_index_of_rows(unit_rows(xt, keep_zero_rows=keep_zero_rows), name="train")
        self.index_info = {"path": None, "built_in_memory": True, "rebuilt": False, "type": "flat",
                           "backend": "faiss"}

    def close(self) -> None:
        if self.__dict__.get("_searcher") is not None:
            self._searcher.close()


def evaluate_features(
    train_features,
    train_labels,
    query_features,
    query_labels=None,
    options=None,
    *,
    class_names: Sequence[str] | None = None,
    k=None,
    **settings,
):
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
        Shorthand for ``k_values``: one k, a ``--k`` SPEC (``"10..200"``) or a list. Default
        (with neither ``k`` nor ``options``): ``"10..200"``, as ``nnk sweep``.

    Returns
    -------
    SweepResult
        ``.to_dict()`` is the JSON-able document; ``.best`` and ``.results`` as ``sweep``'s.
    """
    from nnkcli.evaluation.options import DEFAULT_K_SPEC, ScoringOptions
    from nnkcli.evaluation.sweeps import sweep_evaluation

    if k is not None:
        if "k_values" in settings:
            raise TypeError("give k or k_values, not both")
        settings["k_values"] = k
    elif options is None and "k_values" not in settings:
        settings["k_values"] = DEFAULT_K_SPEC
    options = options if options is not None else ScoringOptions()
    if settings:
        options = options.replace(**settings)
    if query_features is None:
        raise InputError("query_features is None", hint="give the features to classify")
    with InMemoryEvaluation(train_features, train_labels, query_features, query_labels, class_names=class_names,
                            threads=options.threads, search=(options.backend, options.device, options.fp16)) as ev:
        return sweep_evaluation(ev, options)
