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

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnkcli.errors import IndexFileError, InputError
from nnkcli.evaluation.options import DataOptions, ScoringOptions
from nnkcli.evaluation.scoring import solves_cosine_nnk
from nnkcli.evaluation.search import Searcher
from nnkcli.numerics import compiled

logger = logging.getLogger("nnkcli")

#: ``(backend, device, fp16)`` as the options give them (``ScoringOptions.backend/.device/.fp16``)
SearchSettings = tuple[str | None, str, bool]


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
    ) -> Evaluation:
        """Open the store at ``store_path``: the splits and index of ``data`` (default ``DataOptions()``).

        ``search`` is ``(backend, device, fp16)``, resolved before any data is read;
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
        backend, device, fp16 = _resolve_search(search)
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
            # before the index is built or loaded: a refused run costs nothing
            warnings = check_provenance(train, query, strict=data.strict_provenance)
            for text in warnings:
                logger.warning(text)
            nnk_index.set_threads(threads)
            train_labels = np.asarray(train.labels, dtype=np.int64)
            query_labels = np.asarray(query.labels, dtype=np.int64)
            names = store.classes
            top_label = int(max(train_labels.max(initial=-1), query_labels.max(initial=-1)))
            n_classes = max(len(names) if names else 0, top_label + 1, 1)
            class_names = list(names) if names else [str(c) for c in range(n_classes)]
            if backend == "torch":
                searcher, index, index_info = torch_search(train, device, fp16)
            else:
                index, index_info = _resolve_index(
                    store_path, train, data.index_path, data.rebuild_index, progress_factory
                )
                index_info["backend"] = "faiss"
                searcher = _faiss_searcher(index, sharded=bool(index_info.get("shards")))
            # the query rows this run evaluates: all, or one shard's contiguous range
            rows = (0, int(query.n)) if data.shard is None else shard_rows(query.n, *data.shard)
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

        The splits are named ``"train"`` and ``"val"``, the default splits of a store.
        """
        from nnkcli import index as nnk_index
        from nnkcli.evaluation.arrays import ArraySplit, check_features, encode_labels, unit_rows

        backend, device, fp16 = _resolve_search(search)
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
        if backend == "torch":  # the GPU path: exact search by matmul on the device
            searcher, index, index_info = torch_search(train, device, fp16)
        else:
            index = nnk_index.flat_index_of_rows(unit_rows(xt, keep_zero_rows=keep_zero_rows), name="train")
            index_info = {"path": None, "built_in_memory": True, "rebuilt": False, "type": "flat", "backend": "faiss"}
            searcher = _faiss_searcher(index, sharded=False)
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


def _resolve_search(search: SearchSettings) -> tuple[str, str, bool]:
    """(backend, device, fp16) -> the backend and device actually used (``torch_backend.resolve_backend``)."""
    from nnkcli.evaluation.torch_backend import resolve_backend

    backend, device = resolve_backend(*search)
    return backend, device, bool(search[2])


def torch_search(train, device: str, fp16: bool) -> tuple[Searcher, None, dict]:
    """The torch backend's (searcher, index, index_info) over ``train``: exact search by matmul on ``device``."""
    from nnkcli.evaluation.torch_backend import TorchSearcher

    info = {
        "path": None,
        "built_in_memory": True,
        "rebuilt": False,
        "type": "flat",
        "backend": "torch",
        "device": device,
        "fp16": fp16,
    }
    return TorchSearcher(train, device=device, fp16=fp16), None, info


def _faiss_searcher(index, *, sharded: bool) -> Searcher:
    from nnkcli.evaluation.search import IndexSearcher
    from nnkcli.evaluation.sharded_search import ShardedSearcher

    return ShardedSearcher(index) if sharded else IndexSearcher(index)


def _resolve_index(store_path: Path, train, index_path, rebuild_index, progress_factory):
    """The saved index (checked fresh, rebuilt with ``--rebuild-index``) or one built in memory."""
    from nnkcli import index as nnk_index

    explicit = index_path is not None
    path = Path(index_path) if explicit else nnk_index.default_index_path(store_path, train.name)
    info = {"path": str(path), "built_in_memory": False, "rebuilt": False}
    from nnkcli import shards

    if shards.is_manifest(path):
        return _resolve_manifest(store_path, train, path, rebuild_index, progress_factory, info)
    if path.exists():
        loaded = None
        try:
            with progress_factory(None, "loading the index") if progress_factory else contextlib.nullcontext():
                loaded = nnk_index.load_index(path)
            nnk_index.check_fresh(loaded, train, store_path=store_path)
        except IndexFileError as exc:
            if not rebuild_index:
                raise
            logger.warning(f"{exc.message}; rebuilding it (--rebuild-index)")
            # keep the user's index type and parameters when the old file was readable
            params = loaded.params if loaded is not None else nnk_index.IndexParams()
            built = _build(store_path, train, params, progress_factory)
            nnk_index.save_index(built, path)
            info["rebuilt"] = True
            info["type"] = built.params.index_type
            return built, info
        info["type"] = loaded.params.index_type
        return loaded, info
    if explicit:
        raise IndexFileError(
            f"index file not found: {path}", hint="build it with 'nnk index STORE --out PATH', or omit --index"
        )
    logger.info(f"no saved index at {path}; building a flat index in memory (run 'nnk index' to keep one)")
    built = _build(store_path, train, nnk_index.IndexParams(), progress_factory)
    info.update(path=None, built_in_memory=True, type="flat")
    return built, info


def _resolve_manifest(store_path: Path, train, path, rebuild_index, progress_factory, info):
    """A sharded index (``nnk index --shards M``): the manifest is checked now, each shard when loaded
    (with ``--rebuild-index``, every shard now)."""
    from nnkcli import shards

    manifest = None
    try:
        manifest = shards.Manifest(path)
        manifest.check_fresh(train, store_path=store_path)
        if rebuild_index:  # an in-place edit shows only in the shards' rows: look at them all now
            manifest.check_samples()
    except IndexFileError as exc:
        if not rebuild_index or manifest is None:
            raise
        logger.warning(f"{exc.message}; rebuilding it (--rebuild-index)")
        if progress_factory is not None:
            with progress_factory(train.n, "building the index") as advance:
                manifest = shards.build_sharded(
                    train, path, manifest.n_shards, manifest.params, store_path=store_path, progress=advance
                )
        else:
            manifest = shards.build_sharded(train, path, manifest.n_shards, manifest.params, store_path=store_path)
        info["rebuilt"] = True
    info.update(type=manifest.params.index_type, shards=manifest.n_shards)
    return manifest, info


def _build(store_path: Path, train, params, progress_factory):
    from nnkcli import index as nnk_index

    if progress_factory is None:
        return nnk_index.build_index(train, params, store_path=store_path)
    with progress_factory(train.n, "building the index") as advance:
        return nnk_index.build_index(train, params, store_path=store_path, progress=advance)


def with_k(settings: dict, k) -> dict:
    """``settings`` (keyword arguments of ``classify``/``sweep``/``evaluate_features``) with ``k`` as the
    ``k_values`` field: an int, a list of ints or a ``--k`` SPEC string (``"10..200"``).

    ``k`` is the Python name of ``ScoringOptions.k_values``; giving both is a ``TypeError``.
    """
    from nnkcli.evaluation.options import keyword_fields

    return keyword_fields(settings if k is None else {**settings, "k": k})
