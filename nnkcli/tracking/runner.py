"""Evaluate new checkpoints or feature stores into a history file, exactly once each.

``evaluate_sources`` is what ``nnk evaluate`` runs from cron and CI. For each source
(``sources``) it computes the sha256 of the file; a source already in the history is
skipped, any other is evaluated with the sweep function it is given (``nnk evaluate``
passes ``nnkcli.evaluation.sweeps.sweep``; a checkpoint is first extracted into a store
beside the history, ``checkpoints``) and recorded as one appended line (``history``).

Overlapping runs (two cron jobs, a cron job and a CI job) are safe:

* **claims** -- before evaluating a source a run takes its claim (``claims``) without
  waiting; a run that finds the claim taken moves on to its other sources and waits
  for that claim only at the end, then finds the source recorded and skips it. The
  long evaluation runs without holding the history lock, and no source is evaluated
  twice at once.
* **the history lock** -- ``file_lock(history)`` is held only around
  read-decide-append. The append re-reads the history first, so even without
  claims a source could never be recorded twice.
* **crashes** -- a line is appended only once an evaluation is complete, in one
  write, then fsync'd. A run killed at any point leaves every line whole; the
  kernel drops its claim, and the next run evaluates the source again.
* **files still being written** -- a source whose size, mtime or inode changed
  between hashing and the end of its evaluation is reported as failed, not
  recorded, and retried by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal, overload

from nnkcli import __version__
from nnkcli.errors import InputError, NnkError, interrupt_in
from nnkcli.evaluation.kspec import check_k_values, format_k_spec
from nnkcli.evaluation.options import DEFAULT_K_SPEC, DataOptions, ScoringOptions
from nnkcli.plain import jsonable
from nnkcli.storage.atomic import check_can_create, file_lock
from nnkcli.tracking.checkpoints import ModelOptions, checkpoint_store_path, extract_checkpoint
from nnkcli.tracking.claims import claim
from nnkcli.tracking.history import HistoryError, append_entry, check_is_history, read_history
from nnkcli.tracking.paramsets import parameter_key
from nnkcli.tracking.quality_entries import QualityOptions, quality_options, sweep_and_measure
from nnkcli.tracking.sources import file_stamp, is_store, read_step, sha256_file

logger = logging.getLogger("nnkcli")

#: ``sweep(store_path, options, *, data, gate_requested, progress_factory) -> SweepResult``
SweepFunction = Callable[..., Any]


class RunStatus(str, Enum):
    """What happened to one source in a run of ``evaluate_sources``.

    A ``str`` whose value is the word shown in tables and JSON, so
    ``RunStatus.EVALUATED == "evaluated"`` and documents keep their plain strings.
    """

    #: evaluated now and recorded as a new history line
    EVALUATED = "evaluated"
    #: already in the history with these parameters (or recorded by another run meanwhile)
    SKIPPED = "skipped"
    #: could not be evaluated (unreadable, half-written, refused); not recorded, retried next run
    FAILED = "failed"

    def __str__(self) -> str:  # the word, also in f-strings and CSV (Enum would print RunStatus.X)
        return self.value


@dataclass
class SourceOutcome:
    """What happened to one source in this run."""

    source: Path
    status: RunStatus
    sha256: str | None = None
    reason: str | None = None
    entry: dict | None = None  # the recorded line (evaluated) or the existing one (skipped)

    def __post_init__(self):
        self.status = RunStatus(self.status)  # "evaluated" given as a plain string works too

    def to_dict(self) -> dict:
        doc = {
            "source": str(self.source),
            "status": self.status.value,  # the plain word
            "sha256": self.sha256,
            "reason": self.reason,
            "step": (self.entry or {}).get("step"),
            "best": (self.entry or {}).get("best"),
            **({"quality": self.entry["quality"]} if self.entry and "quality" in self.entry else {}),
        }
        if self.status is RunStatus.EVALUATED and self.entry is not None:
            doc["seconds"] = self.entry.get("timing", {}).get("total_s")
        return doc


def status_counts(outcomes: Iterable[SourceOutcome]) -> dict[str, int]:
    """How many sources of a run ended in each status, every status listed:
    ``{"evaluated": n, "skipped": n, "failed": n}``."""
    outcomes = list(outcomes)
    return {status.value: sum(o.status is status for o in outcomes) for status in RunStatus}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def _summarise_results(result: dict, methods: Sequence[str]) -> tuple[list[dict], dict]:
    rows = [r for r in result.get("results", []) if r.get("method") in methods]
    # with --select-on, the recorded "best" (what the history shows and the gates check) is
    # the choice made without the query split's labels; the optimistic one is kept beside it
    chosen = result.get("selected") or result.get("best") or {}
    best = {m: b for m, b in chosen.items() if m in methods}
    return rows, best


def source_parameters(
    options: ScoringOptions,
    data: DataOptions,
    model: ModelOptions | None,
    source: Path,
    quality: QualityOptions | None = None,
) -> dict:
    """Everything that produced a source's results, as recorded in its line (and keyed); quality when measured."""
    checkpoint = not is_store(source)
    if checkpoint:
        data = data.replace(index_path=None)  # a checkpoint's store is made here, with no saved index
    parameters: dict[str, Any] = {**options.as_dict(), **data.as_dict()}
    if checkpoint:
        parameters.pop("index_path")
        if model is not None:
            parameters["model"] = {
                "model": model.model,
                "train_images": str(Path(model.train_images).resolve()),
                "val_images": str(Path(model.val_images).resolve()),
                **model.extract,
            }
    if quality is not None:
        parameters["quality"] = quality.parameters(data.query_split)
    return parameters


def evaluate_one(
    source: Path,
    *,
    sha256: str,
    history_path: Path,
    options: ScoringOptions,
    data: DataOptions,
    sweep: SweepFunction,
    model: ModelOptions | None = None,
    progress_factory: Callable | None = None,
    hits_out: dict | None = None,
    quality: QualityOptions | None = None,
) -> dict:
    """Evaluate one source and return its history line (not yet recorded).

    With ``quality`` the query split's quality metrics are recorded too
    (``nnkcli.tracking.quality_entries``), and a query split without labels is no error.

    ``hits_out``, when given, receives the sweep's per-query results at each method's
    best k (``"hits"``: a ``sidecar.Hits``) for the history's sidecar folder.

    Parameters
    ----------
    source : Path
        A feature store, or a checkpoint when ``model`` is given.
    sha256 : str
        The content hash of ``source`` (computed once by the caller).
    history_path : Path
        Used to place the extracted store of a checkpoint.
    options : ScoringOptions
        How queries are scored (k values, methods, kernel ...).
    data : DataOptions
        The splits and, for a store source, its saved index.
    sweep : callable
        ``sweep(store_path, options, data=..., gate_requested=..., progress_factory=...)``
        returning a ``SweepResult`` (``nnkcli.evaluation.sweeps.sweep``).
    model : ModelOptions, optional
        Required for checkpoint sources.
    """
    started, t0 = _now(), time.perf_counter()
    stat = source.stat()
    checkpoint = not is_store(source)
    if checkpoint and model is None:
        raise InputError(
            f"{source.name} is not a feature store (.h5); a checkpoint needs --model, --train-images and --val-images"
        )
    k_values = options.k_values
    step, step_from = read_step(source, checkpoint)
    if checkpoint:
        data = data.replace(index_path=None)  # a checkpoint's store is made here, with no saved index
    parameters = source_parameters(options, data, model, source, quality)
    store_path = source
    extract_s = None
    if checkpoint and model is not None:  # a checkpoint without a model was refused above
        store_path = checkpoint_store_path(history_path, sha256, model)
        t_extract = time.perf_counter()
        extract_checkpoint(
            source,
            store_path,
            model,
            train_split=data.train_split,
            query_split=data.query_split,
            progress_factory=progress_factory,
        )
        extract_s = time.perf_counter() - t_extract
    try:
        result, measured = sweep_and_measure(sweep, store_path, options, data, quality, progress_factory)
    finally:
        if checkpoint and model is not None and not model.keep_store:
            with contextlib.suppress(OSError):
                store_path.unlink()
    if hits_out is not None and getattr(result, "best_hits", None):
        from nnkcli.tracking.sidecar import Hits, query_identity

        hits_out["hits"] = Hits(
            query_identity(result.query_labels[result.query_labels >= 0], result.query_ids), dict(result.best_hits)
        )
    result = result.to_dict()
    results, best = _summarise_results(result, options.methods)
    timing = {"total_s": round(time.perf_counter() - t0, 3)}
    if extract_s is not None:
        timing["extract_s"] = round(extract_s, 3)
    if isinstance(result.get("timing"), dict):
        timing["sweep"] = result["timing"]
    entry = {
        "source": str(source.resolve()),
        "kind": "checkpoint" if checkpoint else "store",
        "sha256": sha256,
        "size": stat.st_size,
        "mtime": _iso(stat.st_mtime),
        "step": step,
        "step_from": step_from,
        "store": str(store_path.resolve()) if store_path.exists() else None,  # None: --no-keep-store
        "n_train": result.get("n_train"),
        "n_queries": result.get("n_queries"),
        "n_classes": result.get("n_classes"),
        "k_spec": format_k_spec(k_values),
        "k_values": list(k_values),
        "methods": list(options.methods),
        "results": results,
        "best": best,
        **measured,
        **({"warnings": result["warnings"]} if result.get("warnings") else {}),
        **(
            {
                "selection": {k: v for k, v in result["selection"].items() if k != "results"},
                "best_on_query_split": result.get("best"),
            }
            if result.get("selection")
            else {}
        ),
        "parameters": parameters,
        "params_key": parameter_key(parameters),
        "nnkcli_version": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started,
        "finished_at": _now(),
        "timing": timing,
    }
    return jsonable(entry)


def _recorded(
    history_path: Path, sha256: str, params_key: str, after_line: int = 0, lock_timeout: float | None = None
) -> dict | None:
    """The newest entry of (sha256, parameter set), if it is on a line after ``after_line``."""
    with file_lock(history_path, timeout=lock_timeout):
        history = read_history(history_path, lock=False)
    found = history.find(sha256, params_key)
    return found if found is not None and found.get("_line", 0) > after_line else None


def _record(
    history_path: Path, entry: dict, hits=None, after_line: int = 0, lock_timeout: float | None = None
) -> dict | None:
    """Append ``entry`` unless (sha256, parameters) got recorded meanwhile; returns the existing entry then.

    With ``hits`` the per-query results go to the sidecar folder first, atomically, and
    the line names them: a run killed in between leaves an unreferenced file, never a
    line that refers to a missing one.
    """
    with file_lock(history_path, timeout=lock_timeout):
        existing = read_history(history_path, lock=False).find(entry["sha256"], entry["params_key"])
        if existing is not None and existing.get("_line", 0) > after_line:
            return existing
        if hits is not None:
            from nnkcli.tracking import sidecar

            stamp = re.sub(r"[^0-9]", "", str(entry.get("finished_at", "")))[:14]
            name = f"{entry['sha256'][:16]}-{entry['params_key']}-{stamp}-{os.getpid()}"
            entry = dict(entry, hits=sidecar.write(history_path, name, hits))
        append_entry(history_path, entry)
    return None


def evaluate_sources(
    sources: Iterable[str | os.PathLike],
    history_path: str | os.PathLike,
    *,
    options: ScoringOptions | None = None,
    data: DataOptions | None = None,
    sweep: SweepFunction | None = None,
    model: ModelOptions | None = None,
    progress_factory: Callable[[int, str], contextlib.AbstractContextManager] | None = None,
    force: bool = False,
    lock_timeout: float | None = None,
    quality: bool | QualityOptions | None = None,
) -> list[SourceOutcome]:
    """Evaluate every source not yet in the history with these parameters and record each as one line.

    A source is skipped when the history has an entry for its sha256 *and* this
    parameter set (``nnkcli.tracking.paramsets``); other parameters evaluate it again.
    ``force`` re-evaluates even then and records a new line (the newer wins in views).

    Parameters
    ----------
    sources : iterable of path-like
        Feature stores, or checkpoints when ``model`` is given (see ``collect_sources``).
    history_path : path-like
        The ``.jsonl`` history; created when missing. Its directory must exist.
    options : ScoringOptions, optional
        How each source is evaluated (default: ``ScoringOptions(k_values="10..200")``).
    data : DataOptions, optional
        The splits evaluated and, with one store source, its saved index.
    sweep : callable, optional
        The evaluation (default: ``nnkcli.evaluation.sweeps.sweep``); see ``evaluate_one``.
    model : ModelOptions, optional
        How checkpoints are turned into stores.
    progress_factory : callable, optional
        ``progress_factory(total, description)`` returns a context manager yielding
        an ``advance(n)`` callback; handed to the sweep (``Ui.progress`` fits).
    lock_timeout : float, optional
        Seconds to wait for the history's lock held by another run (``LockTimeout``
        after that); None waits. A wait over a second is logged.
    quality : bool or QualityOptions, optional
        Also record the query split's label-free quality metrics (True: ``QualityOptions()``);
        a split without labels then gets an entry with quality only. Part of the parameter set.

    Returns
    -------
    list of SourceOutcome
        One per source, in the order given. A source that fails (unreadable,
        half-written, a bad split) is reported as ``failed`` and not recorded, so
        the next run retries it; the others still run.
    """
    options = options if options is not None else ScoringOptions(k_values=check_k_values(DEFAULT_K_SPEC))
    data = data if data is not None else DataOptions()
    if sweep is None:
        from nnkcli.evaluation.sweeps import sweep as default_sweep

        sweep = default_sweep
    history_path = Path(history_path)
    quality = quality_options(quality)
    if history_path.is_dir():
        raise HistoryError(f"--history is a directory: {history_path}", hint="give a file such as history.jsonl")
    if not history_path.parent.is_dir():
        raise HistoryError(f"the directory of --history does not exist: {history_path.parent}")
    check_is_history(history_path)  # a typo such as --history feats.h5: refused before anything is created
    check_can_create(history_path, "history")  # a read-only folder: now, not after the first evaluation
    paths = [Path(s) for s in sources]
    if model is not None:
        from nnkcli.extract import require_torch

        require_torch("evaluating checkpoints")
    if data.index_path is not None and len(paths) != 1:
        raise InputError("--index names the index of one store; give exactly one SOURCE with it")
    outcomes: dict[int, SourceOutcome] = {}

    deferred: list[_Job] = []
    for i, source in enumerate(paths):
        try:
            stamp = file_stamp(source)  # before hashing: a later change is then always noticed
            sha = sha256_file(source)
        except OSError as exc:
            outcomes[i] = SourceOutcome(source, RunStatus.FAILED, reason=f"cannot read: {exc.strerror or exc}")
            continue
        key = parameter_key(source_parameters(options, data, model, source, quality))
        existing = _recorded(history_path, sha, key, lock_timeout=lock_timeout)
        if existing is not None and not force:
            outcomes[i] = SourceOutcome(source, RunStatus.SKIPPED, sha, "already in history", existing)
            logger.info(f"{source.name}: already in history with these parameters, skipped")
            continue
        job = _Job(
            i,
            len(paths),
            source,
            sha,
            stamp,
            history_path,
            options,
            data,
            sweep,
            model,
            progress_factory,
            key,
            existing.get("_line", 0) if existing is not None else 0,
            force,
            lock_timeout,
            quality,
        )
        outcome = job.run(blocking=False)
        if outcome is None:
            logger.info(f"{source.name}: being evaluated by another process; coming back to it at the end")
            deferred.append(job)
        else:
            outcomes[i] = outcome

    for job in deferred:
        outcomes[job.index] = job.run(blocking=True)
    return [outcomes[i] for i in range(len(paths))]


@dataclass
class _Job:
    """One source to evaluate in this run, and what is needed to do it."""

    index: int
    n_sources: int
    source: Path
    sha256: str
    stamp: tuple
    history_path: Path
    options: ScoringOptions
    data: DataOptions
    sweep: SweepFunction
    model: ModelOptions | None
    progress_factory: Callable | None
    params_key: str = ""
    after_line: int = 0  # with force: only an entry newer than this line counts as done
    force: bool = False
    lock_timeout: float | None = None
    quality: QualityOptions | None = None

    @overload
    def run(self, *, blocking: Literal[True]) -> SourceOutcome: ...
    @overload
    def run(self, *, blocking: bool) -> SourceOutcome | None: ...

    def run(self, *, blocking: bool) -> SourceOutcome | None:
        """Claim, evaluate and record; None when another process holds the claim (non-blocking)."""
        source, sha = self.source, self.sha256
        with claim(self.history_path, sha, blocking=blocking) as held:
            if not held:
                return None
            existing = _recorded(self.history_path, sha, self.params_key, self.after_line, self.lock_timeout)
            if existing is not None:
                return SourceOutcome(source, RunStatus.SKIPPED, sha, "evaluated by another process", existing)
            logger.info(f"evaluating {source} ({self.index + 1}/{self.n_sources})")
            try:
                hits: dict = {}
                entry = evaluate_one(
                    source,
                    sha256=sha,
                    history_path=self.history_path,
                    options=self.options,
                    data=self.data,
                    sweep=self.sweep,
                    model=self.model,
                    progress_factory=self.progress_factory,
                    hits_out=hits,
                    quality=self.quality,
                )
                if self.force:
                    entry["forced"] = True
                if file_stamp(source) != self.stamp:
                    # the line would claim a sha256 that is not what was evaluated
                    raise InputError("changed while being evaluated (still being written?); not recorded")
            except Exception as exc:  # one bad source (half-written, corrupt) must not stop the others
                stop = interrupt_in(exc)
                if stop is not None:  # ... but an interrupt in any wrapping ends the run
                    raise stop from exc
                reason = exc.message if isinstance(exc, NnkError) else f"{type(exc).__name__}: {exc}"
                logger.debug(f"{source.name}: evaluation failed", exc_info=True)
                logger.warning(f"{source.name}: {reason}")
                return SourceOutcome(source, RunStatus.FAILED, sha, reason)
            existing = _record(self.history_path, entry, hits.get("hits"), self.after_line, self.lock_timeout)
            if existing is not None:  # only possible when another writer ignored the claim
                return SourceOutcome(source, RunStatus.SKIPPED, sha, "recorded by another process meanwhile", existing)
            return SourceOutcome(source, RunStatus.EVALUATED, sha, None, entry)
