"""Label-free quality metrics of a split: a placeholder until ``nnk quality`` is merged.

Only the names the history and the gates need are defined here: which metrics exist and
which way each improves. ``quality`` itself is provided by the ``nnk quality`` change.
"""

from __future__ import annotations

import os
from typing import Any

#: metric name -> which way is better (for docs, the history and the gates)
QUALITY_METRICS: dict[str, str] = {
    "rankme": "higher",
    "alpha_req": "closer to 1",
    "nnk_interpolation_error": "lower",
    "loo_nnk_top1": "higher",
    "loo_knn_top1": "higher",
}
#: the metrics a gate can check (``--gate-metric``), each with its direction
GATE_METRICS: dict[str, str] = {
    "rankme": "higher",
    "nnk_interpolation_error": "lower",
    "loo_nnk_top1": "higher",
    "loo_knn_top1": "higher",
}


class QualityResult:
    """The metrics of one split (``to_dict()``: the document of ``nnk quality``)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError("nnkcli.evaluation.quality is not available in this build")


def quality(
    store_path: str | os.PathLike,
    *,
    split: str = "val",
    k: int = 50,
    queries: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    confidence: float = 0.95,
    progress_factory=None,
) -> QualityResult:
    """Label-free quality metrics of one split of a feature store (not available in this build)."""
    raise NotImplementedError("nnkcli.evaluation.quality is not available in this build")
