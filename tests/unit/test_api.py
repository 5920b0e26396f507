"""The public Python API: every exported name resolves, lazily, to what it names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import nnkcli


def test_every_export_resolves_to_a_function_or_class():
    for name in nnkcli.__all__:
        value = getattr(nnkcli, name)
        assert not inspect.ismodule(value), name
        if name != "__version__":
            assert callable(value), name


def test_functions_stay_functions_after_their_modules_are_imported():
    import nnkcli.evaluation.classification
    import nnkcli.evaluation.fewshot
    import nnkcli.evaluation.sweeps
    from nnkcli import FewshotResult, classify, fewshot, sweep

    assert inspect.isfunction(classify) and inspect.isfunction(sweep) and inspect.isfunction(fewshot)
    assert issubclass(FewshotResult, nnkcli.EvaluationResult)


def test_probe_is_the_function_and_returns_its_result(store):
    import nnkcli.evaluation.probe  # noqa: F401  (a submodule of evaluation: nnkcli.probe stays the function)
    from nnkcli import ProbeOptions, ProbeResult, probe

    assert inspect.isfunction(probe) and probe.__module__ == "nnkcli.evaluation.probe"
    result = probe(store, ProbeOptions(c_grid="0.1,10"), threads=1)
    assert isinstance(result, ProbeResult) and result.chosen_c in (0.1, 10.0)
    assert result["results"][0]["method"] == "linear" and dict(result)["chosen_c"] == result.chosen_c


def test_import_is_lazy():
    heavy = "('numpy', 'faiss', 'h5py', 'torch', 'scipy')"
    code = f"import sys, nnkcli; print(' '.join(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
