"""What ``classify`` and ``sweep`` return: the result document, as a dict, as flat rows, as a DataFrame.

Both return an :class:`EvaluationResult`: ``to_dict()`` is the JSON-able document the
CLI prints with ``--format json``; ``rows()`` is one flat dict per result row (method, k,
temperature, top-1, top-5, balanced accuracy, the interval ends ...); ``to_pandas()``
is a DataFrame of those rows (needs pandas: the ``pandas`` extra). The result reads as
a read-only mapping over its document too (``result["results"]``). Accuracies are
percentages (0-100) everywhere.

Examples
--------
>>> result = EvaluationResult({"results": [{"method": "knn", "k": 10, "temperature": 0.07,
...                                         "top1": 91.5, "top1_ci": [88.0, 94.1]}]})
>>> result.rows()
[{'method': 'knn', 'k': 10, 'temperature': 0.07, 'top1': 91.5, 'top1_ci_low': 88.0, 'top1_ci_high': 94.1}]
>>> result["results"][0]["top1"]
91.5
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from nnkcli.errors import MissingDependencyError

#: the leading columns of every row, in this order (the other keys follow as the document has them)
ROW_KEYS = ("method", "k", "temperature")


def flat_row(row: dict, first: Sequence[str], leave_out: Callable[[str, Any], bool]) -> dict[str, Any]:
    """One result row flattened: the ``first`` keys (None where absent), then the others in order, an
    interval ``X_ci = [low, high]`` as ``X_ci_low``/``X_ci_high``, the values ``leave_out(key, value)`` marks
    left out."""
    flat: dict[str, Any] = {key: row.get(key) for key in first}
    for key, value in row.items():
        if key in flat or leave_out(key, value):
            continue
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            flat[f"{key}_low"], flat[f"{key}_high"] = value
        else:
            flat[key] = value
    return flat


class DocumentResult(Mapping[str, Any]):
    """A command's JSON-able document, and a read-only mapping over it (``result["key"]``, ``dict(result)``).

    Parameters
    ----------
    document : dict
        The document, as ``--format json`` prints it.
    """

    def __init__(self, document: dict):
        self.document = document

    def to_dict(self) -> dict:
        """The JSON-able document (the object itself, not a copy), as ``--format json`` prints it."""
        return self.document

    def __getitem__(self, key: str) -> Any:
        return self.document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)


class EvaluationResult(DocumentResult):
    """The result of one evaluation: its JSON-able document and views of it.

    Parameters
    ----------
    document : dict
        The result document (``"results"``: one row per method, k and temperature).
    """

    @property
    def results(self) -> list[dict]:
        """The document's result rows, as they are (intervals as ``[low, high]`` lists)."""
        return self.document["results"]

    def rows(self) -> list[dict]:
        """One flat dict per result row: ``method``, ``k``, ``temperature`` (None where the method has
        none), then the row's other values in the document's order; an interval ``X_ci = [low, high]``
        becomes ``X_ci_low`` and ``X_ci_high`` (the CSV output's columns), and the nested per-class
        accuracies (``per_class=True``) are left out.
        """
        return [flat_row(row, ROW_KEYS, lambda key, value: isinstance(value, dict)) for row in self.results]

    def to_pandas(self):
        """``rows()`` as a ``pandas.DataFrame`` (one row per method, k and temperature).

        Raises
        ------
        MissingDependencyError
            pandas is not installed (``pip install "nnkcli[pandas]"``).
        """
        try:
            import pandas
        except ImportError:
            raise MissingDependencyError("to_pandas()", "pandas") from None
        return pandas.DataFrame(self.rows())

    def __repr__(self) -> str:
        rows = self.document.get("results", [])
        return f"{type(self).__name__}(store={self.document.get('store')!r}, {len(rows)} result rows)"


class ClassifyResult(EvaluationResult):
    """What ``classify`` returns: one k, one row per method (and kNN temperature)."""


class SweepResult(EvaluationResult):
    """What ``sweep`` (and ``evaluate_features``) return: a row per method, k and temperature, and the best.

    ``best_hits``: per method, (its best k, per labelled query whether top-1 was right
    at that k), bool (n_labelled,); ``query_labels``/``query_ids``: the query split's
    labels (all rows) and sample ids (or None) — for paired tests against other runs.
    Not part of the document.
    """

    def __init__(
        self, document: dict, best_hits: dict | None = None, query_labels: object = None, query_ids: list | None = None
    ):
        super().__init__(document)
        self.best_hits = best_hits
        self.query_labels = query_labels
        self.query_ids = query_ids

    @property
    def best(self) -> dict:
        """Per method, the best (k, T) on the query split and the k not significantly worse."""
        return self.document["best"]
