"""The paper's table from feature stores: linear probe | weighted k-NN | NNK, one row per store (``nnk report``).

For each store (a checkpoint's features) ``report`` runs

- ``sweep`` over ``k_values`` with both methods and ``select_on="train"`` (the k of each
  method chosen by leave-one-out on train rows, ``nnkcli.evaluation.selection``), and
- ``probe`` (``nnkcli.evaluation.probe``: C chosen on held-out train rows),

and pairs their per-query top-1 hits: McNemar's exact test of NNK at its selected k against
k-NN at its selected k, and against the linear probe. Every number is the one ``nnk sweep
--select-on train`` and ``nnk probe`` print for the same settings.

**The cache** (``cache_dir``, off by default): each result is saved as one JSON file in that
folder, named by the sha256 of what produced it — the kind (``sweep`` or ``probe``), the
content sha256 of the train and the query split (features and labels: the store's
fingerprints, so a moved or copied store still hits and a re-extracted one misses), the
parameter set (the sweep's scoring and data options, or the probe's options; as the history
keys its entries, ``nnkcli.tracking.paramsets.parameter_key``, which leaves out the thread
count and the index's location) and the nnkcli version. The probe's BLAS thread count is
part of its key (float32 products summed in another order can move a fit in its last digits).
A second report over the same stores computes nothing. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnkcli.evaluation.results import DocumentResult

SCHEMA_VERSION = 1
CACHE_FORMAT = 1


class ReportResult(DocumentResult):
    """What :func:`report` returns: the document (``rows``: one per store).

    ``tracked_documents``: each store's whole sweep document (``store`` set to the path given, the
    probe's row as ``linear``), what ``--wandb``/``--mlflow`` export as one run per store.
    """

    def __init__(self, document: dict, tracked_documents: Sequence[dict] = ()):
        super().__init__(document)
        self.tracked_documents = list(tracked_documents)

    @property
    def rows(self) -> list[dict]:
        return self.document["rows"]


# -- the cache ---------------------------------------------------------------------------------------
def cache_key(kind: str, train_sha256: str, query_sha256: str, parameters: dict) -> str:
    """The sha256 (hex) naming a cached result: kind, both splits' content, parameter key, nnkcli version."""
    from nnkcli import __version__
    from nnkcli.tracking.paramsets import parameter_key

    text = json.dumps(
        [kind, train_sha256, query_sha256, parameter_key(parameters), __version__, CACHE_FORMAT], separators=(",", ":")
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pack(hits: np.ndarray) -> dict:
    return {"n": int(hits.size), "bits": np.packbits(hits.astype(bool)).tobytes().hex()}


def _unpack(packed: dict) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed["bits"]), dtype=np.uint8))
    return bits[: int(packed["n"])].astype(bool)


def _load(cache_dir: Path | None, key: str) -> dict | None:
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing, or damaged: computed again (and rewritten)
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def _save(cache_dir: Path | None, key: str, entry: dict) -> None:
    if cache_dir is None:
        return
    from nnkcli.storage.atomic import atomic_write_text

    atomic_write_text(cache_dir / f"{key}.json", json.dumps({"key": key, **entry}, allow_nan=True))


# -- one store ----------------------------------------------------------------------------------------
def _sweep_part(
    store, options, data, fps: tuple[str, str], cache_dir, progress_factory, stats: dict
) -> tuple[dict, dict]:
    from nnkcli.evaluation.sweeps import sweep

    parameters = {**options.as_dict(), **data.as_dict()}
    key = cache_key("sweep", fps[0], fps[1], parameters)
    entry = _load(cache_dir, key)
    if entry is None:
        result = sweep(store, options, data=data, progress_factory=progress_factory)
        hits = {m: {"k": k, "hits": _pack(h)} for m, (k, h) in (result.best_hits or {}).items()}
        entry = {"document": result.to_dict(), "hits": hits}
        _save(cache_dir, key, entry)
        stats["computed"] += 1
    else:
        stats["reused"] += 1
    return entry["document"], {m: _unpack(v["hits"]) for m, v in entry["hits"].items()}


def _probe_part(store, probe_opts, data, threads, confidence, fps, cache_dir, progress_factory, stats: dict):
    from nnkcli.evaluation.probe import GEMM_PER_THREAD, probe
    from nnkcli.parallel import resolve_threads

    parameters = {
        **probe_opts.as_dict(),
        "train_split": data.train_split,
        "query_split": data.query_split,
        "confidence": confidence,
        "blas_threads_cap": resolve_threads(threads),
        "gemm_per_thread": GEMM_PER_THREAD,
    }
    key = cache_key("probe", fps[0], fps[1], parameters)
    entry = _load(cache_dir, key)
    if entry is None:
        result = probe(
            store,
            probe_opts,
            train_split=data.train_split,
            query_split=data.query_split,
            threads=threads,
            confidence=confidence,
            progress_factory=progress_factory,
        )
        entry = {"document": result.to_dict(), "hits": _pack(result.hits)}
        _save(cache_dir, key, entry)
        stats["computed"] += 1
    else:
        stats["reused"] += 1
    return entry["document"], _unpack(entry["hits"])


def _fingerprints(store, data) -> tuple[str, str]:
    from nnkcli.storage.store_reader import FeatureStore

    with FeatureStore(store) as fs:
        return fs.split(data.train_split).content_sha256, fs.split(data.query_split).content_sha256


def _mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """NNK (a) against another classifier (b) on the same labelled queries."""
    from nnkcli.numerics.stats import mcnemar_exact

    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    return {"nnk_only": a_only, "other_only": b_only, "p_value": mcnemar_exact(a_only, b_only)}


def _cell(row: dict) -> dict:
    return {"top1": row["top1"], "top1_ci": row["top1_ci"]}


def store_row(store, sweep_doc: dict, sweep_hits: dict, probe_doc: dict | None, probe_hits) -> dict:
    """One store's row: the probe, each method at every k and at its selected k, the two McNemar tests."""
    row: dict = {"store": str(store), "n_queries": None, "linear": None}
    for method in ("knn", "nnk"):
        rows = [r for r in sweep_doc["results"] if r["method"] == method]
        sel = sweep_doc["selected"][method]
        row[method] = {
            "by_k": {str(r["k"]): _cell(r) for r in rows},
            "selected": {"k": sel["k"], **_cell(sel)},
        }
        row["n_queries"] = rows[0]["n_queries"] if rows else None
    nnk = sweep_hits["nnk"]
    row["mcnemar"] = {"nnk_vs_knn": _mcnemar(nnk, sweep_hits["knn"]), "nnk_vs_linear": None}
    if probe_doc is not None:
        lin = probe_doc["results"][0]
        row["linear"] = {"c": probe_doc["chosen_c"], **_cell(lin)}
        if probe_hits.size != nnk.size:
            raise ValueError("the probe and the sweep scored different queries")
        row["mcnemar"]["nnk_vs_linear"] = _mcnemar(nnk, probe_hits)
    return row


# -- the whole report ---------------------------------------------------------------------------------
def report(
    stores: Sequence[str | os.PathLike],
    *,
    k: int | str | Sequence[int] = (10, 20, 50, 100, 200),
    options=None,
    data=None,
    probe_options=None,
    linear: bool = True,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress_factory: Callable | None = None,
) -> ReportResult:
    """Linear probe, k-NN and NNK of each store, with intervals and McNemar's tests, one row per store.

    Parameters
    ----------
    stores : sequence of path-like
        Feature stores (one per checkpoint), each with the same splits.
    k : int, SPEC or sequence of int, default=(10, 20, 50, 100, 200)
        The k values of k-NN and NNK (``--k``); each method's k is also selected on train.
    options : ScoringOptions, optional
        How k-NN and NNK score (methods, ``select_on`` and ``k_values`` are set here).
    data : DataOptions, optional
        The train and query splits (and saved indexes).
    probe_options : ProbeOptions, optional
        The probe's grid of C, held-out fraction, seed and fits.
    linear : bool, default=True
        Run the probe (False: the linear column is empty).
    threads : int or None
        Threads of every step.
    cache_dir : path-like, optional
        Reuse and save results there (see the module's docstring for the key).
    progress_factory : callable, optional

    Returns
    -------
    ReportResult
    """
    from nnkcli.errors import InputError
    from nnkcli.evaluation.kspec import check_k_values
    from nnkcli.evaluation.options import DataOptions, ScoringOptions
    from nnkcli.evaluation.probe_options import ProbeOptions

    if not stores:
        raise InputError("no store to report on", hint="give one store per checkpoint")
    k_values = check_k_values(k, "k")
    base = options or ScoringOptions()
    options = base.replace(methods=("nnk", "knn"), k_values=k_values, select_on="train", threads=threads)
    data = data or DataOptions()
    probe_opts = probe_options or ProbeOptions()
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        if not folder.is_dir():
            raise InputError(f"cache folder not found: {folder}", hint="create it first (mkdir)")
    stats = {"computed": 0, "reused": 0}
    rows = []
    tracked = []
    for store in stores:
        fps = _fingerprints(store, data)
        sweep_doc, sweep_hits = _sweep_part(store, options, data, fps, folder, progress_factory, stats)
        probe_doc, probe_hits = None, None
        if linear:
            probe_doc, probe_hits = _probe_part(
                store, probe_opts, data, threads, options.confidence, fps, folder, progress_factory, stats
            )
        rows.append(store_row(store, sweep_doc, sweep_hits, probe_doc, probe_hits))
        linear_row = None if probe_doc is None else {"c": probe_doc["chosen_c"], **probe_doc["results"][0]}
        tracked.append({**sweep_doc, "store": str(store), "linear": linear_row})
    doc = {
        "schema_version": SCHEMA_VERSION,
        "k_values": list(k_values),
        "rows": rows,
        "parameters": {
            "scoring": options.as_dict(),
            "data": data.as_dict(),
            "probe": probe_opts.as_dict() if linear else None,
            "confidence": options.confidence,
            "mcnemar": "exact, NNK at its selected k against k-NN at its selected k and against the linear probe",
        },
        "cache": {"dir": str(folder) if folder is not None else None, **stats},
    }
    return ReportResult(doc, tracked)
