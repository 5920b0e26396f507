"""A small two-split store and the arrays it holds, for the tests of ``nnkcli.evaluation``'s modules."""

from __future__ import annotations

import numpy as np
import pytest


def clusters(seed: int = 0, n_train: int = 240, n_query: int = 60, d: int = 12, n_classes: int = 4):
    """Gaussian clusters: (train features, train labels, query features, query labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * 1.5
    yt = np.arange(n_train) % n_classes
    yq = rng.integers(0, n_classes, size=n_query)
    xt = (centers[yt] + rng.normal(size=(n_train, d))).astype(np.float32)
    xq = (centers[yq] + rng.normal(size=(n_query, d))).astype(np.float32)
    return xt, yt, xq, yq


@pytest.fixture(scope="module")
def arrays():
    return clusters()


@pytest.fixture(scope="module")
def cluster_store(tmp_path_factory):
    """The store of ``clusters()`` (a test module with a ``store`` of its own asks for this name)."""
    from nnkcli.storage.store import write_split

    xt, yt, xq, yq = clusters()
    path = tmp_path_factory.mktemp("evaluation") / "s.h5"
    write_split(path, "train", xt, yt, source="test")
    write_split(path, "val", xq, yq, source="test")
    return path


@pytest.fixture(scope="module")
def store(cluster_store):
    return cluster_store
