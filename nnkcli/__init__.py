"""nnkcli: evaluate frozen features with the NNK classifier beside weighted k-NN.

The command line (``nnk``) is a thin layer over this package, which is usable as a
library too::

    from nnkcli import FeatureStore, nnk_solve, nnk_weights

Names are imported lazily so that ``import nnkcli`` (and ``nnk --help``) stays fast:
numpy, faiss, h5py, scipy and torch load only when a name that needs them is first
used. (The functions ``classify`` and ``sweep`` live in ``nnkcli.evaluation.classification`` and
``nnkcli.evaluation.sweeps``: a submodule named like a function would replace it on the package
as soon as the submodule is imported.)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "NnkError": "nnkcli.errors",
    "ExitCode": "nnkcli.errors",
    "FeatureStore": "nnkcli.storage.store_reader",
    "nnk_solve": "nnkcli.numerics.solver",
    "nnk_weights": "nnkcli.numerics.solver",
    "knn_scores": "nnkcli.numerics.solver",
    "nnk_scores": "nnkcli.numerics.solver",
    "topk_classes": "nnkcli.numerics.solver",
    "topk_hits": "nnkcli.numerics.solver",
    "classify": "nnkcli.evaluation.classification",
    "sweep": "nnkcli.evaluation.sweeps",
    "fewshot": "nnkcli.evaluation.fewshot",
    "parse_k_spec": "nnkcli.evaluation.kspec",
    "ScoringOptions": "nnkcli.evaluation.options",
    "DataOptions": "nnkcli.evaluation.options",
    "write_split": "nnkcli.storage.store",
    "SplitWriter": "nnkcli.storage.split_writer",
    "kernel_blocks": "nnkcli.numerics.solver",
    "NnkResult": "nnkcli.numerics.solver",
    "evaluate_sources": "nnkcli.tracking.runner",
    "read_history": "nnkcli.tracking.history",
    "NNKClassifier": "nnkcli.estimators",
    "WeightedKNNClassifier": "nnkcli.estimators",
    "evaluate_features": "nnkcli.evaluation.in_memory",
    "EvaluationResult": "nnkcli.evaluation.results",
    "ClassifyResult": "nnkcli.evaluation.results",
    "SweepResult": "nnkcli.evaluation.results",
    "FewshotResult": "nnkcli.evaluation.fewshot",
    "probe": "nnkcli.evaluation.probe",
    "ProbeResult": "nnkcli.evaluation.probe",
    "ProbeOptions": "nnkcli.evaluation.probe_options",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nnkcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
