"""scikit-learn style classifiers: :class:`NNKClassifier` and :class:`WeightedKNNClassifier`.

Both score queries with the same code as ``nnk classify`` (``evaluation.scoring.
score_chunk`` over an in-memory flat index of the L2-normalised training rows), so on the
same data they predict exactly what the command line predicts. They follow scikit-learn's
estimator API (``fit``/``predict``/``predict_proba``/``score``/``kneighbors``, ``classes_``,
``get_params``/``set_params``, ``clone``, pickling) and pass
``sklearn.utils.estimator_checks.check_estimator``.

scikit-learn is optional: when it is installed the estimators derive from its
``BaseEstimator``/``ClassifierMixin`` and validate inputs with its ``validate_data``;
without it they use a small stand-in with the same ``get_params``/``set_params``/``score``
and numpy validation. This is the only module that imports scikit-learn.
"""

from __future__ import annotations

import inspect

import numpy as np

from nnkcli.errors import InputError

try:  # optional: the sklearn extra
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets as _check_targets
    from sklearn.utils.validation import check_is_fitted as _check_is_fitted
    from sklearn.utils.validation import validate_data as _validate_data

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised by a test that hides sklearn
    HAVE_SKLEARN = False

SOLVERS = ("exact",)  # the KKT-certified active-set solver (nnkcli.numerics.solver)


class EstimatorInputError(InputError, ValueError):
    """Bad data or parameters given to an estimator (a ValueError, as scikit-learn expects)."""


class NotFittedError(EstimatorInputError, AttributeError):
    """The estimator is used before ``fit`` (scikit-learn's own class when it is installed)."""


if HAVE_SKLEARN:
    _Base = (_ClassifierMixin, _BaseEstimator)
else:

    class _ParamsBase:
        """``get_params``/``set_params``/``score`` as scikit-learn's ``BaseEstimator`` defines them."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            params = inspect.signature(cls.__init__).parameters.values()
            return sorted(p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep: bool = True) -> dict:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise EstimatorInputError(f"invalid parameter {name!r} for {type(self).__name__}",
                                              hint=f"valid parameters: {', '.join(valid)}")
                setattr(self, name, value)
            return self

        def score(self, X, y, sample_weight=None) -> float:
            """Mean accuracy of ``predict(X)`` against ``y``."""
            y = np.asarray(y)
            hits = (self.predict(X) == y).astype(np.float64)
            return float(np.average(hits, weights=sample_weight))

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    _Base = (_ParamsBase,)


def _as_array(values):
    """Torch tensors become numpy once (without importing torch); anything else passes through."""
    from nnkcli.storage.checks import tensor_to_numpy

    return tensor_to_numpy(values)


def _numpy_validate(X, y=None, n_features: int | None = None, name: str = "estimator"):
    """Validation without scikit-learn: 2-D finite real X (and 1-D y of the same length)."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise EstimatorInputError(f"X has the unsupported dtype {X.dtype}; expected real numbers")
    if X.ndim != 2:
        raise EstimatorInputError(f"Expected a 2D array (n_samples, n_features), got shape {X.shape}",
                                  hint="reshape a single sample with X.reshape(1, -1)")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise EstimatorInputError(f"X is empty (shape {X.shape})")
    if not np.isfinite(X).all():
        raise EstimatorInputError("Input X contains NaN or infinity", hint="fix or drop those rows")
    if n_features is not None and X.shape[1] != n_features:
        raise EstimatorInputError(
            f"X has {X.shape[1]} features, but {name} is expecting {n_features} features as input")
    if y is None:
        return X
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != len(X):
        raise EstimatorInputError(f"y must be 1-D with one label per row of X, got shape {y.shape}")
    return X, y


class _NeighborsClassifier(*_Base):
    """Shared fitting, neighbor search and scoring; subclasses pick the method."""

    _method = ""

    def _options(self):
        raise NotImplementedError

    def _check_params(self) -> None:
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise EstimatorInputError(f"n_neighbors must be an integer >= 1, got {k!r}")

    # --- validation -----------------------------------------------------------------
    def _validate(self, X, y=None, *, reset: bool):
        X = _as_array(X)
        if y is not None:
            y = _as_array(y)
        if HAVE_SKLEARN:
            kwargs = dict(reset=reset, dtype=[np.float32, np.float64])
            if y is None:
                return _validate_data(self, X, **kwargs)
            X, y = _validate_data(self, X, y, **kwargs)
            _check_targets(y)
            return X, y
        if reset:
            out = _numpy_validate(X, y)
            self.n_features_in_ = int((out[0] if y is not None else out).shape[1])
            return out
        return _numpy_validate(X, y, n_features=self.n_features_in_, name=type(self).__name__)

    def _check_fitted(self) -> None:
        if HAVE_SKLEARN:
            _check_is_fitted(self, "classes_")
        elif not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet", hint="call fit(X, y) first")

    # --- fitting ---------------------------------------------------------------------
    def fit(self, X, y):
        """Index the training rows.

        Parameters
        ----------
        X : array-like or torch tensor, shape (n_samples, n_features)
            Real features; rows are L2-normalised. An all-zero row has cosine similarity 0
            to every row (scikit-learn's convention; ``nnk extract`` refuses such rows).
        y : array-like, shape (n_samples,)
            Class labels, integers or strings. Rows whose label equals ``unlabelled``
            (default ``-1``, the store's marker) are refused.

        Returns
        -------
        self
        """
        from nnkcli.evaluation.setup import Evaluation

        self._check_params()
        self._options()  # validates the scoring parameters before any work
        if y is None:
            raise EstimatorInputError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X, y = self._validate(X, y, reset=True)
        if self.unlabelled is not None:
            with np.errstate(all="ignore"):
                marked = np.asarray(y == self.unlabelled, dtype=bool).reshape(-1)
            if marked.size == len(y) and marked.any():
                first = int(np.flatnonzero(marked)[0])
                raise EstimatorInputError(
                    f"y has {int(marked.sum())} unlabelled rows (label {self.unlabelled!r}; first: row {first})",
                    hint="drop them before fit, or pass unlabelled=None if that value is a real class",
                )
        classes, y_ids = np.unique(y, return_inverse=True)
        self.classes_ = classes
        try:
            self._ev = Evaluation.from_arrays(np.asarray(X, dtype=np.float32), y_ids.reshape(-1).astype(np.int64),
                                              class_names=[str(c) for c in classes], keep_zero_rows=True)
        except InputError as exc:
            raise EstimatorInputError(exc.message, hint=exc.hint) from None
        self.n_samples_fit_ = int(X.shape[0])
        # at most the number of training rows (a fixed default of 50 would break small fits)
        self.n_neighbors_ = int(min(self.n_neighbors, self.n_samples_fit_))
        return self

    def __getstate__(self):
        # the faiss index is not picklable: keep the training rows, rebuild the index on load
        state = self.__dict__.copy()
        ev = state.pop("_ev", None)
        if ev is not None:
            state["_fit_rows"] = (ev.train.features, ev.train_labels, ev.class_names)
        return state

    def __setstate__(self, state):
        from nnkcli.evaluation.setup import Evaluation

        rows = state.pop("_fit_rows", None)
        self.__dict__.update(state)
        if rows is not None:
            self._ev = Evaluation.from_arrays(rows[0], rows[1], class_names=rows[2], keep_zero_rows=True)

    # --- scoring ---------------------------------------------------------------------
    def _chunks(self, X, k: int):
        """(start, normalised float32 block) pairs sized to the evaluation's memory budget."""
        from nnkcli.evaluation.arrays import unit_rows
        from nnkcli.evaluation.memory import default_chunk_size

        step = default_chunk_size(k, X.shape[1], len(self.classes_))
        for start in range(0, X.shape[0], step):
            yield start, unit_rows(X[start : start + step], keep_zero_rows=True)

    def _score(self, X):
        """Per query: class scores (n, C) as the CLI computes them, and the chunk results."""
        from nnkcli.evaluation.scoring import score_chunk

        self._check_fitted()
        X = self._validate(X, reset=False)
        k = self.n_neighbors_
        opts = self._options().replace(k_values=(k,))
        timing = {"search_s": 0.0, "knn_s": 0.0, "nnk_s": 0.0, "nnk_fallbacks": 0}
        parts = []
        for start, q in self._chunks(X, k):
            labels = np.full(len(q), -1, dtype=np.int64)
            parts.append(score_chunk(self._ev, q, start, labels, opts, timing))
        return parts

    def _proba_and_top(self, X):
        from nnkcli.numerics.scores import topk_classes

        parts = self._score(X)
        key = (self._method, self.n_neighbors_)
        scores = np.concatenate([p.by_method_k[key].scores for p in parts])
        top = topk_classes(scores, 1)[:, 0]
        nearest = np.concatenate([self._ev.train_labels[p.ids[:, 0]] for p in parts])
        positive = np.clip(scores, 0.0, None)
        total = positive.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            proba = np.where(total > 0, positive / total, 0.0)
        # no class with a positive score (all NNK weights zero, or negative similarities
        # under the "similarity" weighting): the nearest neighbor's class, with certainty
        none = top < 0
        top[none] = nearest[none]
        proba[none] = 0.0
        proba[none, nearest[none]] = 1.0
        return proba, top

    def predict(self, X) -> np.ndarray:
        """Class of each row of X: the top-1 class of the CLI's scores.

        Returns
        -------
        ndarray, shape (n_queries,), dtype of ``classes_``
        """
        top = self._proba_and_top(X)[1]
        return self.classes_[top]

    def predict_proba(self, X) -> np.ndarray:
        """Class scores normalised to sum to 1, columns in the order of ``classes_``.

        NNK: the weight mass per class over the total weight (the CLI's NNK scores);
        weighted k-NN: the summed vote weights per class over their total.

        Returns
        -------
        ndarray, shape (n_queries, n_classes), float64
        """
        return self._proba_and_top(X)[0]

    def kneighbors(self, X=None, n_neighbors: int | None = None, return_distance: bool = True):
        """The most similar training rows of each query, most similar first.

        Parameters
        ----------
        X : array-like, shape (n_queries, n_features), optional
            None: the training rows themselves, each without itself (leave-one-out).
        n_neighbors : int, optional
            Default ``n_neighbors_``.
        return_distance : bool, default=True

        Returns
        -------
        dist : ndarray, shape (n_queries, n_neighbors), float64
            Cosine distances ``1 - cos`` (only when ``return_distance``).
        ind : ndarray, shape (n_queries, n_neighbors), int64
            Row numbers into the training data.
        """
        from nnkcli.evaluation.scoring import search_neighbors

        self._check_fitted()
        k = self.n_neighbors_ if n_neighbors is None else n_neighbors
        exclude_self = X is None
        largest = self.n_samples_fit_ - (1 if exclude_self else 0)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= largest:
            raise EstimatorInputError(f"n_neighbors must be an integer in 1..{largest}, got {k!r}")
        X = self._ev.train.features if exclude_self else self._validate(X, reset=False)
        dists, inds = [], []
        for start, q in self._chunks(X, int(k)):
            ids, sims, _, _ = search_neighbors(self._ev, q, start, int(k), exclude_self)
            inds.append(ids)
            dists.append(1.0 - sims)
        ind = np.concatenate(inds)
        return (np.concatenate(dists), ind) if return_distance else ind


class NNKClassifier(_NeighborsClassifier):
    """Non-negative kernel regression (NNK) classifier over the k most similar training rows.

    Each query's weights theta >= 0 on its k neighbors solve
    ``min 1/2 theta' K theta - k_q' theta`` exactly (KKT-certified active set); the class
    scores are the weight mass per class over the total weight.

    Parameters
    ----------
    n_neighbors : int, default=50
        k; at most the number of training rows (``n_neighbors_`` is the k used).
    kernel : {"cosine", "gaussian"}, default="cosine"
        ``(1 + cos) / 2``, or ``exp(-d^2 / 2 s^2)`` with s = the k-th neighbor distance / 3.
    solver : {"exact"}, default="exact"
        The KKT-certified active-set solver.
    tol : float, default=1e-8
        KKT tolerance, relative to max|k_q|.
    unlabelled : int, str or None, default=-1
        The label marking unlabelled rows, refused by ``fit``; None: every label is a class.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_neighbors_ : int
    n_samples_fit_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from nnkcli import NNKClassifier
    >>> X = np.array([[1.0, 0.1], [0.9, 0.2], [0.1, 1.0], [0.2, 0.9]])
    >>> clf = NNKClassifier(n_neighbors=2).fit(X, ["a", "a", "b", "b"])
    >>> clf.predict([[1.0, 0.0]]).tolist()
    ['a']
    """

    _method = "nnk"

    def __init__(self, n_neighbors: int = 50, kernel: str = "cosine", solver: str = "exact", tol: float = 1e-8,
                 unlabelled=-1):
        self.n_neighbors = n_neighbors
        self.kernel = kernel
        self.solver = solver
        self.tol = tol
        self.unlabelled = unlabelled

    def _options(self):
        from nnkcli.evaluation.options import ScoringOptions

        if self.solver not in SOLVERS:
            raise EstimatorInputError(f"unknown solver {self.solver!r}", hint=f"choose one of: {', '.join(SOLVERS)}")
        if not isinstance(self.tol, (int, float)) or not self.tol > 0:
            raise EstimatorInputError(f"tol must be a positive number, got {self.tol!r}")
        try:
            return ScoringOptions(methods=("nnk",), kernel=self.kernel, tol=float(self.tol))
        except InputError as exc:
            raise EstimatorInputError(exc.message, hint=exc.hint) from None

    def nnk_weights(self, X):
        """The neighbors and NNK weights behind ``predict(X)``.

        Returns
        -------
        ids : ndarray, shape (n_queries, n_neighbors_), int64
            Training rows, most similar first.
        theta : ndarray, shape (n_queries, n_neighbors_), float64
            Their non-negative NNK weights (not normalised); zero outside the support.
        """
        parts = self._score(X)
        key = ("nnk", self.n_neighbors_)
        return (np.concatenate([p.ids for p in parts]),
                np.concatenate([p.by_method_k[key].theta for p in parts]))


class WeightedKNNClassifier(_NeighborsClassifier):
    """Weighted k-NN classifier (DINO's ``eval_knn``) over the k most similar training rows.

    Class score = the sum over the neighbors of that class of ``exp(cos / T)`` (``"exp"``),
    ``cos`` (``"similarity"``) or 1 (``"uniform"``).

    Parameters
    ----------
    n_neighbors : int, default=20
        k; at most the number of training rows (``n_neighbors_`` is the k used).
    temperature : float, default=0.07
        T of the ``"exp"`` weighting.
    weighting : {"exp", "similarity", "uniform"}, default="exp"
    unlabelled : int, str or None, default=-1
        The label marking unlabelled rows, refused by ``fit``; None: every label is a class.

    Attributes
    ----------
    classes_, n_features_in_, n_neighbors_, n_samples_fit_ : as :class:`NNKClassifier`
    """

    _method = "knn"

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, weighting: str = "exp", unlabelled=-1):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.weighting = weighting
        self.unlabelled = unlabelled

    def _options(self):
        from nnkcli.evaluation.options import ScoringOptions

        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool):
            raise EstimatorInputError(f"temperature must be a positive number, got {self.temperature!r}")
        try:
            return ScoringOptions(methods=("knn",), temperature=float(self.temperature), weighting=self.weighting)
        except InputError as exc:
            raise EstimatorInputError(exc.message, hint=exc.hint) from None
