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


@pytest.fixture(autouse=True)
def _restore_nnkcli_logger():
    """CLI invocations route the ``nnkcli`` logger to stderr (and stop propagation);
    undo that after each test so that ``caplog`` in later tests sees the records."""
    import logging

    log = logging.getLogger("nnkcli")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.fixture
def tinynets():
    """The tiny torch models of ``tests/helpers/nnk_tinynets.py``, importable as ``nnk_tinynets:NAME``."""
    import nnk_tinynets  # tests/helpers is on pytest's pythonpath

    return nnk_tinynets
