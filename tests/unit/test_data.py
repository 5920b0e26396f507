"""The sample store installed with the package is the one the checkout's examples use."""

from __future__ import annotations

import os

from nnkcli import FeatureStore
from nnkcli.data import SAMPLE_STORE


def test_the_packaged_sample_store_is_the_checkouts(sample_store):
    assert SAMPLE_STORE.is_file() and os.path.samefile(SAMPLE_STORE, sample_store)


def test_the_packaged_sample_store_opens_as_the_docs_say():
    with FeatureStore(SAMPLE_STORE) as store:
        assert store.splits == ["train", "val"] and store.dim == 64
        assert len(store["train"]) == 10_000 and len(store["val"]) == 2_000
