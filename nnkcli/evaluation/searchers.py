"""Where an evaluation's neighbors come from: the searcher of a store's saved index (flat, IVF/HNSW or
shards, checked fresh), of an index built in memory, or of the torch backend; and the search kernel.

Split from :mod:`nnkcli.evaluation.setup`, which builds an :class:`~nnkcli.evaluation.setup.Evaluation`
around what these return.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from nnkcli.errors import IndexFileError, InputError
from nnkcli.evaluation.search import Searcher

logger = logging.getLogger("nnkcli")

#: ``(backend, device, fp16)`` as the options give them (``ScoringOptions.backend/.device/.fp16``)
SearchSettings = tuple[str | None, str, bool]


def memory_search(
    train,
    backend: str,
    device: str,
    fp16: bool,
    *,
    keep_zero_rows: bool = False,
    kernel: str = "fp32",
    threads: int | None = None,
):
    """(searcher, index, index_info) over the rows of an in-memory split (``ArraySplit``): exact search by
    an in-memory flat faiss index of its L2-normalised rows (``kernel``: the resolved search kernel),
    or by matmul on ``device`` (torch)."""
    from nnkcli import index as nnk_index
    from nnkcli.evaluation.arrays import unit_rows

    if backend == "torch":  # the GPU path: exact search by matmul on the device
        return torch_search(train, device, fp16)
    index = nnk_index.flat_index_of_rows(unit_rows(train.features, keep_zero_rows=keep_zero_rows), name=train.name)
    info = {"path": None, "built_in_memory": True, "rebuilt": False, "type": "flat", "backend": "faiss"}
    return faiss_searcher(index, sharded=False, kernel=kernel, threads=threads), index, info


def resolve_search(search: SearchSettings) -> tuple[str, str, bool]:
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


def resolve_kernel(search_kernel: str, backend: str, work: int | None = None) -> str:
    """The flat search's kernel (``fp32``/``bf16``, by the main thread: it may import torch); the torch backend's own.

    ``bf16`` asked of the torch backend is refused: that backend multiplies as ``--fp16`` says.
    ``work``: the search's queries x rows x dimension per thread, which ``auto`` weighs (None: not known yet).
    """
    from nnkcli.index_flat import resolve_kernel

    if backend == "torch":
        if search_kernel == "bf16":
            raise InputError(
                "--search-kernel bf16 is a kernel of the faiss backend's flat index",
                hint="drop --backend torch, or use its --fp16",
            )
        return "fp32"
    return resolve_kernel(search_kernel, work)


def faiss_searcher(index, *, sharded: bool, kernel: str = "fp32", threads: int | None = None) -> Searcher:
    """The searcher of a faiss index (``threads``: the run's ``--threads``, which prepare a bf16 kernel's rows)."""
    from nnkcli.evaluation.search import IndexSearcher
    from nnkcli.evaluation.sharded_search import ShardedSearcher
    from nnkcli.parallel import resolve_threads

    if sharded:
        return ShardedSearcher(index, kernel=kernel, threads=resolve_threads(threads))
    return IndexSearcher(index, kernel=kernel, threads=resolve_threads(threads))


def index_location(store_path, train, index_path) -> Path:
    """Where this run's index lies: ``--index``, else the default path beside the store for the train split."""
    from nnkcli import index as nnk_index

    return Path(index_path) if index_path is not None else nnk_index.default_index_path(Path(store_path), train.name)


def resolve_index(store_path: Path, train, index_path, rebuild_index, progress_factory):
    """The saved index (checked fresh, rebuilt with ``--rebuild-index``) or one built in memory."""
    from nnkcli import index as nnk_index

    explicit = index_path is not None
    path = index_location(store_path, train, index_path)
    info = {"path": str(path), "built_in_memory": False, "rebuilt": False}
    from nnkcli import shards

    if shards.is_manifest(path):
        return resolve_manifest(store_path, train, path, rebuild_index, progress_factory, info)
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
            built = build(store_path, train, params, progress_factory)
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
    built = build(store_path, train, nnk_index.IndexParams(), progress_factory)
    info.update(path=None, built_in_memory=True, type="flat")
    return built, info


def resolve_manifest(store_path: Path, train, path, rebuild_index, progress_factory, info):
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


def build(store_path: Path, train, params, progress_factory):
    from nnkcli import index as nnk_index

    if progress_factory is None:
        return nnk_index.build_index(train, params, store_path=store_path)
    with progress_factory(train.n, "building the index") as advance:
        return nnk_index.build_index(train, params, store_path=store_path, progress=advance)
