"""nnkcli.evaluation.setup: Evaluation.from_store and Evaluation.from_arrays give the same evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from nnkcli.errors import InputError
from nnkcli.evaluation.options import ScoringOptions
from nnkcli.evaluation.search import IndexSearcher
from nnkcli.evaluation.setup import Evaluation
from nnkcli.evaluation.streaming import evaluate_chunks


def _accuracies(ev, opts):
    accs, _ = evaluate_chunks(ev, opts)
    return {
        key: (acc.result()["top1"], acc.result()["top5"], acc.result()["balanced_accuracy"])
        for key, acc in accs.items()
    }


def test_from_arrays_gives_the_accuracies_of_from_store_on_the_same_data(store, arrays):
    opts = ScoringOptions(methods="both", k_values=[1, 7, 30], kernel="cosine")
    with Evaluation.from_store(store) as on_disk, Evaluation.from_arrays(*arrays) as in_memory:
        assert type(in_memory) is Evaluation and type(on_disk) is Evaluation
        assert isinstance(on_disk.searcher, IndexSearcher) and isinstance(in_memory.searcher, IndexSearcher)
        assert (in_memory.train.name, in_memory.query.name) == (on_disk.train.name, on_disk.query.name)
        assert in_memory.class_names == on_disk.class_names and in_memory.n_classes == on_disk.n_classes
        np.testing.assert_array_equal(in_memory.query_labels, on_disk.query_labels)
        assert in_memory.rows == on_disk.rows == (0, 60)
        assert in_memory.store is None and in_memory.store_path is None and in_memory.shard is None
        assert in_memory.index_info == {
            "path": None,
            "built_in_memory": True,
            "rebuilt": False,
            "type": "flat",
            "backend": "faiss",
        }
        expected = _accuracies(on_disk, opts)
        assert _accuracies(in_memory, opts) == expected
    # an independent count for one of them: the 1-NN top-1 by brute force
    xt, yt, xq, yq = arrays
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argmax(unit(xq.astype(np.float64)) @ unit(xt.astype(np.float64)).T, axis=1)
    assert expected[("knn", 1)][0] == pytest.approx(100 * np.mean(yt[nearest] == yq), abs=1e-4)  # rounded to 4 places


def test_both_ways_in_share_the_torch_search(store, arrays):
    pytest.importorskip("torch")
    from nnkcli.evaluation.torch_backend import TorchSearcher

    search = ("torch", "cpu", False)
    opts = ScoringOptions(methods="knn", k_values=[5])
    with (
        Evaluation.from_store(store, search=search) as on_disk,
        Evaluation.from_arrays(*arrays, search=search) as in_memory,
    ):
        for ev in (on_disk, in_memory):
            assert isinstance(ev.searcher, TorchSearcher) and ev.index is None
            assert (ev.backend, ev.device, ev.fp16) == ("torch", "cpu", False)
        assert (
            on_disk.index_info
            == in_memory.index_info
            == {
                "path": None,
                "built_in_memory": True,
                "rebuilt": False,
                "type": "flat",
                "backend": "torch",
                "device": "cpu",
                "fp16": False,
            }
        )
        assert _accuracies(in_memory, opts) == _accuracies(on_disk, opts)


def test_from_arrays_checks_its_inputs(arrays):
    xt, yt, xq, yq = arrays
    with pytest.raises(InputError, match="query features have dimension 5 but train features have 12"):
        Evaluation.from_arrays(xt, yt, xq[:, :5], yq)
    with pytest.raises(InputError, match="train features have 240 rows but train labels have 239"):
        Evaluation.from_arrays(xt, yt[1:])
    with pytest.raises(InputError, match="train features are empty"):
        Evaluation.from_arrays(xt[:0], yt[:0])
    with Evaluation.from_arrays(xt, yt) as ev:  # no queries: the index only (the estimators' fit)
        assert ev.query.n == 0 and ev.rows == (0, 0)


def test_the_in_memory_path_is_no_subclass():
    import nnkcli.evaluation.in_memory as in_memory

    assert not hasattr(in_memory, "InMemoryEvaluation")
    assert Evaluation.__subclasses__() == []
