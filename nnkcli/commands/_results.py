"""Result tables shared by ``classify`` and ``sweep`` (their options are in ``_options.py``)."""

from __future__ import annotations

from nnkcli.output import Column


def result_columns(include_support: bool = True) -> list[Column]:
    cols = [
        Column("method", justify="left"),
        Column("k"),
        Column("top1", "top-1 %", ".2f", ci="top1_ci"),
        Column("top5", "top-5 %", ".2f", ci="top5_ci"),
        Column("balanced_accuracy", "balanced %", ".2f", ci="balanced_accuracy_ci"),
        Column("n_queries", "queries"),
    ]
    if include_support:
        cols.append(Column("support_mean", "nnk support", ".1f"))
    return cols
