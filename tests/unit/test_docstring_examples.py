"""The ``Examples`` sections of the public API run, so they cannot go stale.

Each module's doctests run with ``demo_store`` (a small two-split feature store) in their
namespace and in a temporary working directory. Examples that need a model or a data set
they cannot make are marked ``# doctest: +SKIP`` in the source.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

MODULES = [
    "nnkcli.settings",
    "nnkcli.evaluation.options",
    "nnkcli.evaluation.kspec",
    "nnkcli.evaluation.classification",
    "nnkcli.evaluation.sweeps",
    "nnkcli.evaluation.results",
    "nnkcli.evaluation.quality",
    "nnkcli.evaluation.fewshot",
    "nnkcli.numerics.solver",
    "nnkcli.storage.store",
    "nnkcli.storage.store_reader",
    "nnkcli.storage.array_files",
    "nnkcli.storage.split_writer",
    "nnkcli.tracking.sources",
    "nnkcli.plain",
    "nnkcli.estimators",
]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from nnkcli.storage.store import write_split

    path = tmp_path_factory.mktemp("demo") / "demo.h5"
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8)) * 2
    for split, n in (("train", 120), ("val", 30)):
        y = rng.integers(0, 3, n)
        write_split(path, split, (means[y] + rng.normal(size=(n, 8))).astype(np.float32), y, source="demo")
    return path


@pytest.mark.parametrize("name", MODULES)
def test_examples(name, demo_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name, extraglobs={"demo_store": demo_store}) if t.examples]
    assert tests, f"{name} has no Examples to run"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
