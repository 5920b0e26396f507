"""The set-up of one evaluation: the train and query rows, their labels and classes, and a searcher.

:class:`Evaluation` has two ways in, which give the same object to the same scoring code:

- :meth:`Evaluation.from_store` opens a feature store, checks the two splits against each
  other (dimension, provenance), and loads its saved index (checked fresh against the
  train rows; ``--rebuild-index`` rebuilds a stale one), or its index shards, or builds a
  flat index in memory when none is saved;
- :meth:`Evaluation.from_arrays` takes arrays held in memory (numpy, or torch tensors
  converted once) and L2-normalises the train rows into an in-memory flat index, exactly as
  the store path builds one when no index is saved, so both give the same neighbors and scores.

With the torch backend (``--backend torch``) both search by matmul on the device instead
(:func:`torch_search`, one branch for both).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError
from nnkcli.evaluation.options import DataOptions, ScoringOptions
from nnkcli.evaluation.scoring import solves_cosine_nnk
from nnkcli.evaluation.search import Searcher
from nnkcli.evaluation.searchers import (
    SearchSettings,
    faiss_searcher,
    memory_search,
    resolve_index,
    resolve_kernel,
    resolve_search,
    torch_search,
)
from nnkcli.numerics import compiled

logger = logging.getLogger("nnkcli")


class Evaluation:
    """Train and query rows, their labels and classes, and the searcher of one run.

    Made by :meth:`from_store` or :meth:`from_arrays`; a context manager (``close()``
    releases the searcher and the store).

    Attributes
    ----------
    train, query : split
        A store split or an in-memory ``ArraySplit`` (``name``, ``n``, ``dim``, ``read``, ...).
    train_labels, query_labels : ndarray of int64, (n_train,) and (n_query,); -1 = unlabelled
    class_names : list of str
    n_classes : int
    searcher : Searcher
        What the scoring code asks for neighbors (``nnkcli.evaluation.search``).
    index : NnkIndex, Manifest or None
        The faiss index (or index shards) behind the searcher; None with the torch backend.
    index_info : dict
        What the result document says about the index (path, type, backend, ...).
    backend, device, fp16
        The search backend and device actually used.
    store, store_path
        The opened store and its path (None for arrays in memory).
    warnings : list of str
        Provenance warnings about the two splits.
    shard, rows
        ``(I, N)`` or None, and the query rows ``(start, stop)`` this run evaluates.
    """

    def __init__(
        self,
        *,
        train,
        query,
        train_labels: np.ndarray,
        query_labels: np.ndarray,
        class_names: list[str],
        n_classes: int,
        searcher: Searcher,
        index,
        index_info: dict,
        backend: str,
        device: str,
        fp16: bool,
        store=None,
        store_path: Path | None = None,
        warnings: Sequence[str] = (),
        shard: tuple[int, int] | None = None,
        rows: tuple[int, int] | None = None,
    ):
        self.train, self.query = train, query
        self.train_labels, self.query_labels = train_labels, query_labels
        self.class_names, self.n_classes = class_names, n_classes
        self.searcher, self.index, self.index_info = searcher, index, index_info
        self.backend, self.device, self.fp16 = backend, device, fp16
        self.store, self.store_path = store, store_path
        self.warnings = list(warnings)
        self.shard = shard
        self.rows = rows if rows is not None else (0, int(query.n))

    @classmethod
    def from_store(
        cls,
        store_path: str | os.PathLike,
        data: DataOptions | None = None,
        *,
        threads: int | None = None,
        progress_factory: Callable | None = None,
        search: SearchSettings = (None, "cpu", False),
        search_kernel: str = "auto",
    ) -> Evaluation:
        """Open the store at ``store_path``: the splits and index of ``data`` (default ``DataOptions()``).

        ``search`` is ``(backend, device, fp16)``, resolved before any data is read, as is
        ``search_kernel`` (:func:`nnkcli.index_flat.resolve_kernel`);
        ``progress_factory(total, description)`` shows an index being built.

        Raises
        ------
        InputError
            The splits differ in dimension, the train split is empty, their provenance
            differs under ``strict_provenance``, or the saved index is stale (without
            ``rebuild_index``).
        """
        from nnkcli import index as nnk_index
        from nnkcli.evaluation.partials import shard_rows
        from nnkcli.storage.provenance import check_provenance
        from nnkcli.storage.store import FeatureStore

        data = data if data is not None else DataOptions()
        backend, device, fp16 = resolve_search(search)
        kernel = resolve_kernel(search_kernel, backend)
        store_path = Path(store_path)
        store = FeatureStore(store_path)
        try:
            train = store.split(data.train_split)
            query = store.split(data.query_split)
            if train.dim != query.dim:
                raise InputError(
                    f"query split '{data.query_split}' has dimension {query.dim} but train split "
                    f"'{data.train_split}' has {train.dim}",
                    hint="both splits must come from the same model",
                )
            if train.n < 1:
                raise InputError(f"train split '{data.train_split}' is empty")
            if backend != "torch":
                from nnkcli.index_flat import prefetch_kernel

                prefetch_kernel(search_kernel, search_work(int(query.n), train, threads))
            # before the index is built or loaded: a refused run costs nothing
            warnings = check_provenance(train, query, strict=data.strict_provenance)
            for text in warnings:
                logger.warning(text)
            nnk_index.set_threads(threads)
            train_labels, query_labels, class_names = split_labels(store, train, query)
            n_classes = len(class_names)
            # the query rows this run evaluates: all, or one shard's contiguous range
            rows = (0, int(query.n)) if data.shard is None else shard_rows(query.n, *data.shard)
            if backend == "torch":
                searcher, index, index_info = torch_search(train, device, fp16)
            else:
                index, index_info = resolve_index(
                    store_path, train, data.index_path, data.rebuild_index, progress_factory
                )
                index_info["backend"] = "faiss"
                # auto weighs the search's size, now known (the call above checked an explicit kernel early); a
                # sharded index's bf16 search rounds its rows as it goes (no copy of a shard is held)
                sharded = bool(index_info.get("shards"))
                kernel = resolve_kernel(search_kernel, backend, search_work(rows[1] - rows[0], train, threads))
                searcher = faiss_searcher(index, sharded=sharded, kernel=kernel, threads=threads)
            return cls(
                train=train,
                query=query,
                train_labels=train_labels,
                query_labels=query_labels,
                class_names=class_names,
                n_classes=n_classes,
                searcher=searcher,
                index=index,
                index_info=index_info,
                backend=backend,
                device=device,
                fp16=fp16,
                store=store,
                store_path=store_path,
                warnings=warnings,
                shard=data.shard,
                rows=rows,
            )
        except BaseException:
            store.close()
            raise

    @classmethod
    def from_arrays(
        cls,
        train_features,
        train_labels,
        query_features=None,
        query_labels=None,
        *,
        class_names: Sequence[str] | None = None,
        threads: int | None = None,
        keep_zero_rows: bool = False,
        search: SearchSettings = (None, "cpu", False),
        search_kernel: str = "auto",
    ) -> Evaluation:
        """An evaluation of arrays held in memory: no store, an in-memory flat index (or the torch search).

        Parameters
        ----------
        train_features : array-like or torch tensor, shape (n_train, d), real
        train_labels : array-like, shape (n_train,), class ids (-1 = unlabelled) or strings
        query_features : array-like, shape (n_query, d), optional (None: the index only, for estimators)
        query_labels : array-like, shape (n_query,), optional (None: unlabelled queries)
        class_names : sequence of str, optional
        threads : int, optional
        keep_zero_rows : bool, default=False
            Accept all-zero train rows (similar to nothing) instead of refusing them (faiss backend only).
        search : (backend, device, fp16)
        search_kernel : {"auto", "fp32", "bf16"}, default="auto"

        The splits are named ``"train"`` and ``"val"``, the default splits of a store.
        """
        from nnkcli import index as nnk_index
        from nnkcli.evaluation.arrays import ArraySplit, check_features, encode_labels

        backend, device, fp16 = resolve_search(search)
        kernel = resolve_kernel(search_kernel, backend)
        if backend == "torch" and keep_zero_rows:
            raise InputError("all-zero rows are kept only by the faiss backend", hint="use backend='faiss'")
        xt = check_features(train_features, "train features")
        if xt.shape[0] < 1:
            raise InputError("train features are empty")
        if query_features is None:
            xq = np.zeros((0, xt.shape[1]), dtype=np.float32)
        else:
            xq = check_features(query_features, "query features")
        if xq.shape[1] != xt.shape[1]:
            raise InputError(
                f"query features have dimension {xq.shape[1]} but train features have {xt.shape[1]}",
                hint="both must come from the same model",
            )
        yt, yq, names = encode_labels(train_labels, query_labels, class_names)
        if yq is None:  # unlabelled queries: predictions only
            yq = np.full(len(xq), -1, dtype=np.int64)
        for what, x, y in (("train", xt, yt), ("query", xq, yq)):
            if len(y) != len(x):
                raise InputError(
                    f"{what} features have {len(x)} rows but {what} labels have {len(y)}",
                    hint="give one label per feature row",
                )
        train, query = ArraySplit("train", xt, yt), ArraySplit("val", xq, yq)
        nnk_index.set_threads(threads)
        kernel = resolve_kernel(search_kernel, backend, search_work(len(xq), train, threads))
        searcher, index, index_info = memory_search(
            train, backend, device, fp16, keep_zero_rows=keep_zero_rows, kernel=kernel, threads=threads
        )
        return cls(
            train=train,
            query=query,
            train_labels=yt,
            query_labels=yq,
            class_names=names,
            n_classes=max(len(names), 1),
            searcher=searcher,
            index=index,
            index_info=index_info,
            backend=backend,
            device=device,
            fp16=fp16,
        )

    def max_k(self, exclude_self: bool) -> int:
        return int(self.train.n) - (1 if exclude_self else 0)

    def check_k(self, opts: ScoringOptions) -> None:
        """The k values against this data (k > n_train is a data error, exit 1, not a usage error)."""
        if opts.exclude_self and self.query.name != self.train.name:
            raise InputError(
                "--exclude-self needs the query split to be the train split",
                hint=f"pass --query-split {self.train.name} for leave-one-out evaluation",
            )
        largest = self.max_k(opts.exclude_self)
        too_large = [k for k in opts.k_values if k > largest]
        if not too_large:
            return  # a k beyond the memory budget is refused where the chunks are sized (plan_chunks)
        from nnkcli.evaluation.memory import chunk_budget, largest_k
        from nnkcli.parallel import resolve_threads

        threads = resolve_threads(opts.threads)
        fits = largest_k(self.searcher, opts, dim=self.train.dim, n_classes=self.n_classes, threads=threads)
        hint = f"the largest valid k is {largest}"
        if fits is not None and fits < largest:  # the memory budget binds first: one hint, the k that runs
            hint = (
                f"the largest valid k is {fits}: the train split allows {largest} and a query chunk's memory "
                f"budget, {chunk_budget(self.searcher, opts, threads).describe()}, allows {fits}; "
                "--chunk-size 1 runs a larger k with more memory"
            )
        raise InputError(f"k={too_large[0]} is larger than the train split allows ({self.train.n} rows)", hint=hint)

    def relabel(self, train_labels, query_labels=None) -> None:
        """Score against these labels instead of the stored ones: in memory only, the store is never written.

        What a self-test needs (``nnk audit --inject-noise``): flip some labels on purpose and see
        whether the scoring finds them. Call it before scoring starts.

        Parameters
        ----------
        train_labels : array-like of int, shape (n_train,)
            Class ids in ``0 .. n_classes - 1``, -1 = unlabelled.
        query_labels : array-like of int, shape (n_query,), optional
            None: the queries keep theirs, unless the query split is the train split (leave-one-out),
            whose queries then get ``train_labels`` too.
        """
        same_split = self.query.name == self.train.name and self.query.n == self.train.n
        if query_labels is None and same_split:
            query_labels = train_labels
        checked = []
        for what, labels, split in (("train", train_labels, self.train), ("query", query_labels, self.query)):
            if labels is None:
                checked.append(self.query_labels)
                continue
            y = np.asarray(labels)
            if y.shape != (split.n,) or y.dtype.kind not in "iu":
                raise InputError(f"{what} labels must be {split.n} class ids, got {y.dtype} of shape {y.shape}")
            if y.size and (y.min() < -1 or y.max() >= self.n_classes):
                raise InputError(f"{what} labels must lie in -1..{self.n_classes - 1}")
            checked.append(y.astype(np.int64))
        self.train_labels, self.query_labels = checked
        self.searcher.labels_changed()

    def close(self) -> None:
        self.searcher.close()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Evaluation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_evaluation(store_path, options: ScoringOptions, data: DataOptions, progress_factory=None) -> Evaluation:
    """:meth:`Evaluation.from_store` for ``options`` (classify, sweep, compare)."""
    if solves_cosine_nnk(options):
        compiled.warm_up()  # loads the compiled kernel while the index loads and the first block is searched
    return Evaluation.from_store(
        store_path,
        data,
        threads=options.threads,
        progress_factory=progress_factory,
        search=(options.backend, options.device, options.fp16),
        search_kernel=options.search_kernel,
    )


def check_labelled(ev: Evaluation, gate_requested: bool) -> None:
    """A query split with no labels at all: predictions only (an error if a gate needs accuracy)."""
    if ev.query.n and not (ev.query_labels >= 0).any():
        if gate_requested:
            raise InputError(
                f"query split '{ev.query.name}' has no labels, so --min-top1/--min-top5 cannot be checked",
                hint="extract the query split with --labels, or drop the gate",
            )
        logger.warning(f"query split '{ev.query.name}' has no labels: predictions only, no accuracy")


def split_labels(store, train, query) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The class ids (n,) int64 of two store splits (-1 = unlabelled) and the class names: the store's
    list, else ``"0" .. str(C - 1)`` for the largest id found (one name at least)."""
    train_labels = np.asarray(train.labels, dtype=np.int64)
    query_labels = np.asarray(query.labels, dtype=np.int64)
    names = store.classes
    top_label = int(max(train_labels.max(initial=-1), query_labels.max(initial=-1)))
    n_classes = max(len(names) if names else 0, top_label + 1, 1)
    return train_labels, query_labels, list(names) if names else [str(c) for c in range(n_classes)]


def with_k(settings: dict, k) -> dict:
    """``settings`` (keyword arguments of ``classify``/``sweep``/``evaluate_features``) with ``k`` as the
    ``k_values`` field: an int, a list of ints or a ``--k`` SPEC string (``"10..200"``).

    ``k`` is the Python name of ``ScoringOptions.k_values``; giving both is a ``TypeError``.
    """
    from nnkcli.evaluation.options import keyword_fields

    return keyword_fields(settings if k is None else {**settings, "k": k})


def search_work(queries: int, train, threads: int | None) -> int:
    """Multiply-adds of the flat search per thread (queries x rows x d / threads): what ``auto`` weighs."""
    from nnkcli.parallel import resolve_threads

    return int(queries) * int(train.n) * int(train.dim) // resolve_threads(threads)
