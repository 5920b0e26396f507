"""The label-free quality metrics in a history: what ``nnk evaluate --quality`` records, and reads back.

With ``quality`` requested, each evaluated source gets, beside its accuracy sweep, the
metrics of ``nnkcli.evaluation.quality`` on the query split (the split the sweep reads),
recorded as three fields of its history line::

    "quality": {"rankme": 41.2, "alpha_req": 0.93, "nnk_interpolation_error": 0.21,
                "loo_nnk_top1": null, "loo_knn_top1": null},
    "quality_split": "val", "quality_k": 50

A query split without labels gives no accuracy; with quality requested it is not an error:
the line has ``results: []`` and ``best: {}`` and its quality, and a warning says why.

The quality settings are part of the parameter set (``parameters["quality"]``), so entries
with and without quality, or with another ``k``, are different series: a gate compares a
metric only between entries computed the same way. Without quality the parameters, and so
the keys of existing histories, are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnkcli.errors import InputError

#: the ``k`` of ``nnk evaluate --quality`` (``--quality-k``): the k of ``nnk quality``
DEFAULT_QUALITY_K = 50
#: the order of the quality columns and scalars (the keys of the recorded summary)
QUALITY_COLUMNS = ("rankme", "alpha_req", "nnk_interpolation_error", "loo_nnk_top1", "loo_knn_top1")


@dataclass(frozen=True)
class QualityOptions:
    """How ``evaluate_sources`` measures the quality of each source's query split.

    Parameters
    ----------
    k : int, default=50
        Neighbors of the NNK interpolation error (and the leave-one-out top-1).
    queries : int, optional
        Rows of the split used for the interpolation error (a seeded sample); None: all.
    seed : int, default=0
        Seed of that sample and of RankMe's above 25,600 rows.
    """

    k: int = DEFAULT_QUALITY_K
    queries: int | None = None
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InputError(f"quality k must be an integer >= 1, got {self.k!r}")
        if self.queries is not None and (
            isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1
        ):
            raise InputError(f"quality queries must be an integer >= 1 (or None: all rows), got {self.queries!r}")

    def parameters(self, split: str) -> dict:
        """The settings recorded (and keyed) in ``parameters["quality"]``."""
        return {"split": split, "k": self.k, "queries": self.queries, "seed": self.seed}


def quality_options(quality: bool | QualityOptions | None) -> QualityOptions | None:
    """``True`` -> the defaults; ``False``/``None`` -> no quality; options as given."""
    if quality is None or quality is False:
        return None
    if quality is True:
        return QualityOptions()
    if isinstance(quality, QualityOptions):
        return quality
    raise TypeError(f"quality must be a bool or QualityOptions, got {type(quality).__name__}")


def split_is_labelled(store_path: str | Path, split: str) -> bool:
    """Whether ``split`` of the store has at least one labelled row (a missing split: True, the sweep says why)."""
    from nnkcli.storage.store import FeatureStore

    with FeatureStore(store_path) as store:
        if split not in store:
            return True
        return store.split(split).has_labels


@dataclass
class UnlabelledSweep:
    """What stands for the sweep of a query split without labels: its sizes, no accuracy."""

    n_train: int | None
    n_queries: int
    n_classes: int | None
    split: str

    @classmethod
    def of(cls, store_path: str | Path, train_split: str, query_split: str) -> UnlabelledSweep:
        from nnkcli.storage.store import FeatureStore

        with FeatureStore(store_path) as store:
            n_train = len(store.split(train_split)) if train_split in store else None
            classes = store.classes
            return cls(n_train, len(store.split(query_split)), len(classes) if classes else None, query_split)

    def to_dict(self) -> dict:
        return {
            "n_train": self.n_train,
            "n_queries": self.n_queries,
            "n_classes": self.n_classes,
            "results": [],
            "best": {},
            "warnings": [f"query split '{self.split}' has no labels: no accuracy, quality metrics only"],
        }


def measure_quality(
    store_path: str | Path,
    quality: QualityOptions,
    *,
    split: str,
    threads: int | None = None,
    confidence: float = 0.95,
    progress_factory: Callable | None = None,
) -> dict:
    """The quality fields of a history line: ``quality`` (the summary), ``quality_split``, ``quality_k``."""
    from nnkcli.evaluation import quality as metrics  # the module, so that tests can replace its function

    result = metrics.quality(
        store_path,
        split=split,
        k=quality.k,
        queries=quality.queries,
        seed=quality.seed,
        threads=threads,
        confidence=confidence,
        progress_factory=progress_factory,
    )
    summary = result.to_dict()["summary"]
    return {"quality": dict(summary), "quality_split": split, "quality_k": quality.k}


def quality_value(entry: dict, metric: str) -> float | None:
    """The recorded value of a quality metric in an entry, or None (not recorded, not finite)."""
    recorded = entry.get("quality")
    value = recorded.get(metric) if isinstance(recorded, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def quality_metrics_of(entries: Sequence[dict]) -> list[str]:
    """The quality metrics with a value in any entry, in ``QUALITY_COLUMNS`` order (then any other)."""
    seen: list[str] = []
    for entry in entries:
        recorded = entry.get("quality")
        if isinstance(recorded, dict):
            seen += [m for m in recorded if m not in seen and quality_value(entry, m) is not None]
    return [m for m in QUALITY_COLUMNS if m in seen] + sorted(m for m in seen if m not in QUALITY_COLUMNS)


def quality_row(entry: dict, metrics: Sequence[str]) -> dict[str, Any]:
    """The quality columns of one history row: metric -> value (None where not recorded)."""
    return {m: quality_value(entry, m) for m in metrics}


def sweep_and_measure(
    sweep: Callable[..., Any],
    store_path: str | Path,
    options: Any,
    data: Any,
    quality: QualityOptions | None,
    progress_factory: Callable | None = None,
) -> tuple[Any, dict]:
    """The sweep of a store (an ``UnlabelledSweep`` for a query split without labels when quality
    is measured) and the quality fields of its line (``{}`` without quality).

    ``options``, ``data``: the run's ``ScoringOptions`` and ``DataOptions``.
    """
    if quality is not None and not split_is_labelled(store_path, data.query_split):
        result: Any = UnlabelledSweep.of(store_path, data.train_split, data.query_split)
    else:  # gate_requested: a query split without labels gives no accuracy to record: an error
        result = sweep(store_path, options, data=data, gate_requested=True, progress_factory=progress_factory)
    if quality is None:
        return result, {}
    measured = measure_quality(
        store_path,
        quality,
        split=data.query_split,
        threads=options.threads,
        confidence=options.confidence,
        progress_factory=progress_factory,
    )
    return result, measured
