"""The committed sample store is what its recipe says: Fashion-MNIST, per-class subsets, PCA-64."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nnkcli.storage.store import FeatureStore

IDX = Path("/usr/share/datasets/fashion-mnist")
needs_idx = pytest.mark.skipif(
    not (IDX / "train-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist is not installed"
)


def _idx_labels(name: str) -> np.ndarray:
    with gzip.open(IDX / f"{name}-labels-idx1-ubyte.gz", "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=8)


def test_features_are_a_pca_of_the_train_subset(sample_store):
    with FeatureStore(sample_store) as fs:
        x = fs.split("train").read().astype(np.float64)
    # PCA scores: centred, uncorrelated, variances in decreasing order
    assert np.abs(x.mean(axis=0)).max() < 1e-4
    cov = np.cov(x, rowvar=False)
    variances = np.diag(cov)
    assert np.all(np.diff(variances) <= 1e-6)
    off_diagonal = cov - np.diag(variances)
    assert np.abs(off_diagonal).max() < 1e-4 * variances[0]


def test_every_class_is_balanced_and_ids_are_unique(sample_store):
    with FeatureStore(sample_store) as fs:
        for name, per_class in (("train", 1000), ("val", 200)):
            split = fs.split(name)
            assert np.bincount(split.labels).tolist() == [per_class] * 10
            assert len(set(split.ids)) == split.n


@needs_idx
def test_labels_match_the_idx_files(sample_store):
    with FeatureStore(sample_store) as fs:
        for name, idx_name, prefix in (("train", "train", "train-images:"), ("val", "t10k", "t10k-images:")):
            split = fs.split(name)
            rows = np.array([int(i.removeprefix(prefix)) for i in split.ids])
            np.testing.assert_array_equal(_idx_labels(idx_name)[rows], split.labels)


@needs_idx
def test_the_script_rebuilds_the_committed_store(sample_store, tmp_path):
    spec = importlib.util.spec_from_file_location("make_fashion_mnist", sample_store.parent / "make_fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path / "f.h5")]) == 0
    with FeatureStore(sample_store) as committed, FeatureStore(tmp_path / "f.h5") as rebuilt:
        for name in ("train", "val"):
            a, b = committed.split(name), rebuilt.split(name)
            np.testing.assert_allclose(b.read(), a.read(), atol=1e-4)
            np.testing.assert_array_equal(b.labels, a.labels)
            assert b.ids == a.ids
