"""scikit-learn style classifiers: :class:`NNKClassifier` and :class:`WeightedKNNClassifier`.

Both score queries with the same code as ``nnk classify`` (``evaluation.scoring.
score_chunk`` over an in-memory flat index of the L2-normalised training rows), so on the
same data they predict exactly what the command line predicts. They follow scikit-learn's
estimator API (``fit``/``predict``/``predict_proba``/``score``/``kneighbors``, ``classes_``,
``clone``, pickling) and pass ``sklearn.utils.estimator_checks.check_estimator`` on their
defaults: every label is a class, ``-1`` too; the store's "-1 is unlabelled" is opt-in
(``unlabelled=-1``: those rows are neighbors that never vote, as in ``nnk classify``). The
scoring parameters are checked by the core's rules (``ScoringOptions``); a bad value raises a
``ValueError`` naming the Python parameter.

scikit-learn is optional: when it is installed the estimators derive from its
``BaseEstimator``/``ClassifierMixin`` and validate inputs with its ``validate_data``; without
it, from a stand-in with the same ``get_params``/``set_params``/``score`` and numpy checks.
This is the only module that imports scikit-learn.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from nnkcli.errors import InputError, OptionError

try:  # optional: the sklearn extra
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets as _check_targets
    from sklearn.utils.validation import check_is_fitted as _check_is_fitted
    from sklearn.utils.validation import validate_data as _validate_data

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised by a test that hides sklearn
    HAVE_SKLEARN = False


class EstimatorInputError(InputError, ValueError):
    """Bad data or parameters given to an estimator (a ValueError, as scikit-learn expects)."""


class NotFittedError(EstimatorInputError, AttributeError):
    """The estimator is used before ``fit`` (scikit-learn's own class when it is installed)."""


if HAVE_SKLEARN:

    class _Base(_ClassifierMixin, _BaseEstimator):
        """scikit-learn's own estimator API."""

else:

    class _Base:  # type: ignore[no-redef]
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
                    raise EstimatorInputError(
                        f"invalid parameter {name!r} for {type(self).__name__}",
                        hint=f"valid parameters: {', '.join(valid)}",
                    )
                setattr(self, name, value)
            return self

        def score(self, X, y, sample_weight=None) -> float:
            """Mean accuracy of ``predict(X)`` against ``y``."""
            y = np.asarray(y)
            hits = (self.predict(X) == y).astype(np.float64)  # type: ignore[attr-defined]
            return float(np.average(hits, weights=sample_weight))

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"


def _as_array(values):
    """Torch tensors become numpy once (without importing torch); anything else passes through."""
    from nnkcli.storage.checks import tensor_to_numpy

    return tensor_to_numpy(values)


def _parameter_error(name: str, value, exc: OptionError, options: dict) -> EstimatorInputError:
    """The core's complaint, naming the parameter, not the CLI option (``options``: parameter -> option)."""
    reason, hint = getattr(exc, "reason", None) or str(exc), exc.hint
    for param, option in options.items():  # a hint's "--kernel gaussian" becomes "kernel=gaussian"
        hint = hint and hint.replace(f"{option} ", f"{param}=")
    return EstimatorInputError(f"{name}: {reason} (got {value!r})", hint=hint)


def _numpy_validate(X, y=None, n_features: int | None = None, name: str = "estimator"):
    """Validation without scikit-learn: 2-D finite real X (and 1-D y of the same length)."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise EstimatorInputError(f"X has the unsupported dtype {X.dtype}; expected real numbers")
    if X.ndim != 2:
        raise EstimatorInputError(
            f"Expected a 2D array (n_samples, n_features), got shape {X.shape}",
            hint="reshape a single sample with X.reshape(1, -1)",
        )
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise EstimatorInputError(f"X is empty (shape {X.shape})")
    if not np.isfinite(X).all():
        raise EstimatorInputError("Input X contains NaN or infinity", hint="fix or drop those rows")
    if n_features is not None and X.shape[1] != n_features:
        raise EstimatorInputError(
            f"X has {X.shape[1]} features, but {name} is expecting {n_features} features as input"
        )
    if y is None:
        return X
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != len(X):
        raise EstimatorInputError(f"y must be 1-D with one label per row of X, got shape {y.shape}")
    return X, y


class _NeighborsClassifier(_Base):
    """Shared fitting, neighbor search and scoring; subclasses pick the method."""

    _method = ""
    _NUMBERS = ("tol", "temperature")  # must be real numbers (the core's checks also take strings)

    def _options(self):
        raise NotImplementedError

    def _check_params(self) -> None:
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise EstimatorInputError(f"n_neighbors must be an integer >= 1, got {k!r}")
        if np.ndim(self.unlabelled) != 0:
            raise EstimatorInputError(f"unlabelled must be one label value or None, got {self.unlabelled!r}")

    def _scoring_options(self, **params):
        """The core's ``ScoringOptions`` of this method with ``params``, checked by the core's rules;
        a bad value raises ``EstimatorInputError`` naming the Python parameter (not the CLI option)."""
        from nnkcli.evaluation.options import ScoringOptions

        options = {name: option for name, option in ScoringOptions.option_names().items() if name in params}
        for name, value in params.items():
            if name in self._NUMBERS and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise EstimatorInputError(f"{name}: expected a number (got {value!r})")
            try:
                ScoringOptions.check_field(name, value)
            except OptionError as exc:
                raise _parameter_error(name, value, exc, options) from None
        try:  # the rules between fields (the pruning solver needs the cosine kernel)
            return ScoringOptions(methods=(self._method,), **params)
        except OptionError as exc:
            name = {option: name for name, option in options.items()}.get(exc.option, next(iter(params)))
            raise _parameter_error(name, params[name], exc, options) from None

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
            Class labels, integers or strings; every value is a class (``-1`` too), except
            the value of ``unlabelled`` when it is set: those rows are indexed but never vote.

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
        labelled = self._labelled(y)
        if not labelled.any():
            raise EstimatorInputError(f"every row of y has the label unlabelled={self.unlabelled!r}")
        classes, ids = np.unique(y[labelled], return_inverse=True)
        y_ids = np.full(len(y), -1, dtype=np.int64)  # -1: the core's "never votes"
        y_ids[labelled] = ids.reshape(-1)
        self.classes_, names, X = classes, [str(c) for c in classes], np.asarray(X, dtype=np.float32)
        try:
            self._ev = Evaluation.from_arrays(X, y_ids, class_names=names, keep_zero_rows=True)
        except InputError as exc:
            raise EstimatorInputError(exc.message, hint=exc.hint) from None
        self.n_samples_fit_ = int(X.shape[0])
        # at most the number of training rows (a fixed default of 50 would break small fits)
        self.n_neighbors_ = int(min(self.n_neighbors, self.n_samples_fit_))
        return self

    def _labelled(self, y) -> np.ndarray:
        """(n_samples,) bool: the rows whose label is a class; a label of another type than
        ``unlabelled`` compares unequal (numpy's scalar False is broadcast)."""
        if self.unlabelled is None:
            return np.ones(len(y), dtype=bool)
        return ~np.broadcast_to(np.asarray(y == self.unlabelled, dtype=bool), (len(y),))

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
        """The validated queries, and the chunk results (class scores as the CLI computes them)."""
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
        return X, parts

    def _proba_and_top(self, X):
        from nnkcli.numerics.scores import topk_classes

        X, parts = self._score(X)
        key = (self._method, self.n_neighbors_)
        scores = np.concatenate([p.by_method_k[key].scores for p in parts])
        top = topk_classes(scores, 1)[:, 0]
        positive = np.clip(scores, 0.0, None)
        total = positive.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            proba = np.where(total > 0, positive / total, 0.0)
        # no class with a positive score (all NNK weights zero or on unlabelled rows, negative
        # similarities under the "similarity" weighting): the nearest labelled row's class, with certainty
        none = np.flatnonzero(top < 0)
        if none.size:
            neighbor_labels = np.concatenate([self._ev.train_labels[p.ids] for p in parts])[none]
            nearest = self._nearest_labelled(X[none], neighbor_labels)
            top[none] = nearest
            proba[none] = 0.0
            proba[none, nearest] = 1.0
        return proba, top

    def _nearest_labelled(self, X, neighbor_labels) -> np.ndarray:
        """Class ids of each query's most similar labelled training row: the first labelled one of
        ``neighbor_labels`` (n, k; -1 = unlabelled), else by comparing with every labelled row."""
        from nnkcli.evaluation.arrays import unit_rows

        has = neighbor_labels >= 0
        out = neighbor_labels[np.arange(len(X)), has.argmax(axis=1)]
        rest = np.flatnonzero(~has.any(axis=1))
        if rest.size:
            labelled = np.flatnonzero(self._ev.train_labels >= 0)
            rows = unit_rows(self._ev.train.features[labelled], keep_zero_rows=True)
            q = unit_rows(X[rest], keep_zero_rows=True)
            step = max(1, 2**22 // len(rows))  # about 16 MiB of similarities at a time
            for s in range(0, len(q), step):
                best = np.argmax(q[s : s + step] @ rows.T, axis=1)
                out[rest[s : s + step]] = self._ev.train_labels[labelled[best]]
        return out

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

        NNK: the weight mass per class over the labelled weight (the CLI's NNK scores);
        weighted k-NN: the summed vote weights per class over their total. Unlabelled
        neighbors (see ``unlabelled``) add to no class.

        Returns
        -------
        ndarray, shape (n_queries, n_classes), float64
        """
        return self._proba_and_top(X)[0]

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy of ``predict(X)`` against ``y``, as a fraction in [0, 1] (scikit-learn's
        convention, which model selection relies on; nnkcli's documents report percentages).

        Parameters
        ----------
        X : array-like, shape (n_queries, n_features)
        y : array-like, shape (n_queries,)
            True labels.
        sample_weight : array-like, shape (n_queries,), optional

        Returns
        -------
        float
        """
        return super().score(X, y, sample_weight=sample_weight)

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
            Row numbers into the training data (unlabelled rows included).
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
    ``min 1/2 theta' K theta - k_q' theta`` (by default exactly: KKT-certified active set);
    the class scores are the weight mass per class over the total weight.

    Parameters
    ----------
    n_neighbors : int, default=50
        k; at most the number of training rows (``n_neighbors_`` is the k used).
    kernel : {"cosine", "gaussian"}, default="cosine"
        ``(1 + cos) / 2``, or ``exp(-d^2 / 2 s^2)`` with s = the k-th neighbor distance / 3.
    solver : {"exact", "pruning"}, default="exact"
        The solvers of ``nnk classify --solver``: the KKT-certified active set, or the NNK
        paper's pruning solver (``nnkcli.numerics.pruning``; cosine kernel only).
    tol : float, default=1e-8
        KKT tolerance of the exact solver, relative to max|k_q|.
    unlabelled : int, str or None, default=None
        None: every label is a class (``-1`` too). A value (``-1``, the store's marker): rows
        with that label may be among a query's k neighbors (they take part in the NNK solve)
        but add to no class score (the value is not in ``classes_``).

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
    >>> clf.score([[1.0, 0.0], [0.0, 1.0]], ["a", "a"])  # a fraction, as scikit-learn requires
    0.5
    """

    _method = "nnk"

    def __init__(
        self, n_neighbors: int = 50, kernel: str = "cosine", solver: str = "exact", tol: float = 1e-8, unlabelled=None
    ):
        self.n_neighbors = n_neighbors
        self.kernel = kernel
        self.solver = solver
        self.tol = tol
        self.unlabelled = unlabelled

    def _options(self):
        return self._scoring_options(kernel=self.kernel, solver=self.solver, tol=self.tol)

    def nnk_weights(self, X):
        """The neighbors and NNK weights behind ``predict(X)``.

        Returns
        -------
        ids : ndarray, shape (n_queries, n_neighbors_), int64
            Training rows, most similar first.
        theta : ndarray, shape (n_queries, n_neighbors_), float64
            Their non-negative NNK weights (not normalised); zero outside the support.
            Unlabelled neighbors (see ``unlabelled``) get weights too; they vote for no class.
        """
        parts = self._score(X)[1]
        key = ("nnk", self.n_neighbors_)
        return (np.concatenate([p.ids for p in parts]), np.concatenate([p.by_method_k[key].theta for p in parts]))


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
    unlabelled : int, str or None, default=None
        None: every label is a class (``-1`` too). A value (``-1``, the store's marker): rows
        with that label may be among a query's k neighbors but never vote (not in ``classes_``).

    Attributes
    ----------
    classes_, n_features_in_, n_neighbors_, n_samples_fit_ : as :class:`NNKClassifier`
    """

    _method = "knn"

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, weighting: str = "exp", unlabelled=None):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.weighting = weighting
        self.unlabelled = unlabelled

    def _options(self):
        return self._scoring_options(temperature=self.temperature, weighting=self.weighting)
