"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_STORE = REPO / "sample_data" / "fashion-mnist.h5"


@pytest.fixture
def sample_store() -> Path:
    if not SAMPLE_STORE.exists():
        pytest.fail(f"the committed sample store is missing: {SAMPLE_STORE}")
    return SAMPLE_STORE


@pytest.fixture
def store(tmp_path, request) -> Path:
    """A small labelled two-split store, ``tmp_path / "feats.h5"``, made by ``nnk_data.make_store``.

    A module or test changes its data with ``pytest.mark.store(**make_store_arguments)``.
    """
    import nnk_data  # tests/helpers is on pytest's pythonpath

    marker = request.node.get_closest_marker("store")
    return nnk_data.make_store(tmp_path / "feats.h5", **(marker.kwargs if marker else {}))


@pytest.fixture
def runner():
    from click.testing import CliRunner

    try:  # click >= 8.2 keeps stderr apart by default
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="session")
def _nnkcli_logger_baseline():
    """The ``nnkcli`` logger as the session found it (before any command ran in-process)."""
    import logging

    log = logging.getLogger("nnkcli")
    return list(log.handlers), log.level, log.propagate


@pytest.fixture(autouse=True)
def _restore_nnkcli_logger(_nnkcli_logger_baseline):
    """CLI invocations route the ``nnkcli`` logger to stderr (and stop propagation). Each test starts
    and ends with the session's logger, so that ``caplog`` sees the records even after a module-scoped
    fixture ran a command."""
    import logging

    log = logging.getLogger("nnkcli")
    handlers, level, propagate = _nnkcli_logger_baseline

    def restore():
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate

    restore()
    yield
    restore()


@pytest.fixture
def tinynets():
    """The tiny torch models of ``tests/helpers/nnk_tinynets.py``, importable as ``nnk_tinynets:NAME``."""
    import nnk_tinynets  # tests/helpers is on pytest's pythonpath

    return nnk_tinynets


@pytest.fixture(params=["mkl", "torch"])
def bf16_library(request, monkeypatch):
    """Each library of the bfloat16 product in turn (NNKCLI_BF16_LIBRARY), skipped where it cannot run."""
    from nnkcli import index_bf16

    monkeypatch.setenv("NNKCLI_BF16_LIBRARY", request.param)
    index_bf16.bf16_unavailable.cache_clear()
    why = index_bf16.bf16_unavailable()
    if why is not None:
        pytest.skip(why)
    yield request.param
    index_bf16.bf16_unavailable.cache_clear()
