"""The label audit (``nnkcli.evaluation.audit``) against oracles written here from its definitions.

The oracle of each row: its k nearest *other* rows by brute force (float64 cosine, ties by row),
the NNK weights from ``scipy.optimize.nnls`` on the feature-space least-squares form of the
cosine-kernel problem (``min 1/2 t'Gt - g't, t >= 0`` with ``G = (1 + X X') / 2``, ``g = (1 + X q) / 2``
is ``min |A t - b|^2 / 2`` with ``A = [1; X'] / sqrt 2``, ``b = [1; q] / sqrt 2``), then the definitions:
reliability = weight on the row's label / all weight; the k-NN share = exp(s / T) votes for the label
over the votes of the labelled neighbors.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from nnkcli.errors import InputError, OptionError
from nnkcli.evaluation.audit import audit, auroc, flip_labels, precision_at

K = 8
T = 0.07
CLASSES = ["ant", "bee", "cat"]


def _data(seed=0, n=90, d=16, n_classes=3, unlabelled=(5, 17, 40)):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    y = np.arange(n) % n_classes
    x = (means[y] + 1.3 * rng.normal(size=(n, d))).astype(np.float32)
    y = y.copy()
    y[list(unlabelled)] = -1
    return x, y


@pytest.fixture(scope="module")
def audit_store(tmp_path_factory):
    from nnkcli.storage.store import write_split

    x, y = _data()
    path = tmp_path_factory.mktemp("audit") / "a.h5"
    write_split(path, "train", x, y, ids=[f"s{i:03d}" for i in range(len(y))], class_names=CLASSES, source="test")
    return path, x, y


def oracle(x, y, k=K, n_classes=3):
    """Per row: (reliability, NNK label, its share, k-NN share of the label, k-NN label), by a plain loop."""
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    out = {}
    for i in range(len(x)):
        if y[i] < 0:
            continue
        sims = xn @ xn[i]
        sims[i] = -np.inf  # leave-one-out: never its own row
        nb = np.lexsort((np.arange(len(x)), -sims))[:k]
        A = np.vstack([np.ones(k), xn[nb].T]) / np.sqrt(2)
        b = np.concatenate([[1.0], xn[i]]) / np.sqrt(2)
        theta = nnls(A, b, maxiter=100 * k)[0]
        per_class = np.array([theta[y[nb] == c].sum() for c in range(n_classes)])
        votes = np.array([np.exp(sims[nb] / T)[y[nb] == c].sum() for c in range(n_classes)])
        out[i] = (
            per_class[y[i]] / theta.sum(),
            int(per_class.argmax()),
            per_class.max() / theta.sum(),
            votes[y[i]] / votes.sum(),
            int(votes.argmax()),
        )
    return out


def test_reliability_matches_a_per_row_loop(audit_store):
    path, x, y = audit_store
    res = audit(path, k=K)
    want = oracle(x, y)
    assert sorted(res.rows.tolist()) == sorted(want)  # every labelled row, no unlabelled one
    for i, row in enumerate(res.rows):
        rel, label, share, knn_share, knn_label = want[int(row)]
        assert res.reliability[i] == pytest.approx(rel, abs=1e-6)
        assert res.suggested[i] == label
        assert res.suggested_weight[i] == pytest.approx(share, abs=1e-6)
        assert res.knn_share[i] == pytest.approx(knn_share, rel=1e-6)  # exp(s / 0.07) of float32 queries
        assert res.knn_label[i] == knn_label
        assert res.labels[i] == y[row]
        assert res.ids[i] == f"s{row:03d}"
    assert 0.05 < res.reliability.min() and res.reliability.max() == pytest.approx(1.0)  # a spread to test


def test_rows_run_from_least_reliable_and_unlabelled_rows_are_not_audited(audit_store):
    path, _, y = audit_store
    res = audit(path, k=K, threshold=0.6)
    assert np.all(np.diff(res.reliability) >= 0)
    doc = res.to_dict()
    assert doc["audited"] == int((y >= 0).sum()) == len(res.rows) and doc["unlabelled"] == 3
    assert doc["flagged"] == int((res.reliability < 0.6).sum())
    flagged = res.table(all_rows=False)
    assert [r["row"] for r in flagged] == res.rows[: doc["flagged"]].tolist()
    assert doc["worst"] == res.table()[:10]
    by_class = {c["class"]: c for c in doc["classes"]}
    for c, name in enumerate(CLASSES):
        mine = res.labels == c
        assert by_class[name]["rows"] == int(mine.sum())
        assert by_class[name]["flagged"] == int((res.reliability[mine] < 0.6).sum())
        assert by_class[name]["noise_estimate"] == pytest.approx(by_class[name]["flagged"] / by_class[name]["rows"])
        assert by_class[name]["mean_reliability"] == pytest.approx(res.reliability[mine].mean(), abs=1e-6)


def test_a_split_without_labels_is_refused_by_name(tmp_path):
    from nnkcli.storage.store import write_split

    x, _ = _data()
    path = tmp_path / "u.h5"
    write_split(path, "train", x, None, source="test")
    write_split(path, "pool", x, None, source="test")
    with pytest.raises(InputError, match="split 'pool' has no labels"):
        audit(path, split="pool", k=K)


def naive_auroc(scores, positives):
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_the_pairwise_count_with_ties_halved(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    positives = rng.random(60) < 0.3
    assert auroc(scores, positives) == pytest.approx(naive_auroc(scores, positives), abs=1e-12)


def test_auroc_without_positives_or_negatives_is_nan_and_a_perfect_split_is_one():
    assert np.isnan(auroc([0.1, 0.2], [False, False])) and np.isnan(auroc([0.1, 0.2], [True, True]))
    assert auroc([0.1, 0.2, 0.9], [False, False, True]) == 1.0


def test_precision_at_counts_the_first_rows_of_the_order():
    positives = np.array([True, False, True, False])
    assert precision_at(np.array([2, 1, 0, 3]), positives, 2) == 0.5
    assert precision_at(np.array([0, 2, 1, 3]), positives, 2) == 1.0


def test_flip_labels_flips_exactly_round_rate_n_labelled_rows_to_other_classes_reproducibly():
    y = np.array([0, 1, 2, 3] * 50 + [-1] * 7)
    noisy, flipped = flip_labels(y, 0.13, seed=4)
    labelled = int((y >= 0).sum())
    assert len(flipped) == round(0.13 * labelled) == int((noisy != y).sum())
    assert np.array_equal(np.flatnonzero(noisy != y), flipped)
    assert np.all(noisy[flipped] != y[flipped]) and set(noisy[flipped]) <= {0, 1, 2, 3}
    assert np.all(noisy[y < 0] == -1)  # unlabelled rows are never flipped
    again, _ = flip_labels(y, 0.13, seed=4)
    other, _ = flip_labels(y, 0.13, seed=5)
    assert np.array_equal(again, noisy) and not np.array_equal(other, noisy)
    # every other class is reached
    many, rows = flip_labels(np.zeros(400, dtype=int) + np.arange(400) % 4, 0.5, seed=0)
    assert {(a, b) for a, b in zip(np.arange(400)[rows] % 4, many[rows], strict=True)} == {
        (a, b) for a in range(4) for b in range(4) if a != b
    }


@pytest.mark.parametrize(
    ("labels", "rate", "error"),
    [([0, 1, 0, 1], 0.1, InputError), ([0, 0, 0, 0], 0.5, InputError), ([0, 1], 1.0, OptionError)],
)
def test_flip_labels_refuses_what_it_cannot_do(labels, rate, error):
    with pytest.raises(error):
        flip_labels(np.array(labels), rate, seed=0)


def test_the_self_test_audits_the_flipped_labels_and_leaves_the_store_alone(audit_store):
    from nnkcli.storage.store_reader import FeatureStore

    path, x, y = audit_store
    before = path.read_bytes()
    res = audit(path, k=K, inject_noise=0.2, noise_seed=3)
    assert path.read_bytes() == before
    noisy, flipped_rows = flip_labels(y, 0.2, seed=3)
    want = oracle(x, noisy)  # the scoring saw the flipped labels, neighbors' labels included
    for i, row in enumerate(res.rows):
        assert res.reliability[i] == pytest.approx(want[int(row)][0], abs=1e-6)
        assert res.labels[i] == noisy[row] and res.original[i] == y[row]
        assert res.flipped[i] == (row in flipped_rows)
    test = res.to_dict()["self_test"]
    assert test["flipped"] == len(flipped_rows) == round(0.2 * int((y >= 0).sum()))
    m = test["flipped"]
    assert test["nnk"]["auroc"] == pytest.approx(naive_auroc(1 - res.reliability, res.flipped), abs=1e-6)
    assert test["knn"]["auroc"] == pytest.approx(naive_auroc(1 - res.knn_share, res.flipped), abs=1e-6)
    assert test["nnk"]["precision_at_flipped"] == pytest.approx(res.flipped[:m].mean(), abs=1e-6)
    by_knn = sorted(range(len(res.rows)), key=lambda i: (res.knn_share[i], res.rows[i]))[:m]
    assert test["knn"]["precision_at_flipped"] == pytest.approx(res.flipped[by_knn].mean(), abs=1e-6)
    assert test["nnk"]["auroc"] > 0.8  # the audit finds the flips on this data
    with FeatureStore(path) as fs:
        assert np.array_equal(fs.split("train").labels, y)


def test_relabel_checks_the_labels():
    from nnkcli.evaluation.setup import Evaluation

    with Evaluation.from_arrays(np.eye(4), [0, 1, 0, 1]) as ev:
        with pytest.raises(InputError, match="4 class ids"):
            ev.relabel(np.array([0, 1]))
        with pytest.raises(InputError, match=r"-1\.\.1"):
            ev.relabel(np.array([0, 1, 2, 0]))
        ev.relabel(np.array([1, 0, -1, 1]))
        assert ev.train_labels.tolist() == [1, 0, -1, 1] and ev.query_labels.tolist() == []


def test_zero_weight_rows_and_unlabelled_neighbors_follow_the_definitions():
    from nnkcli.evaluation.audit import _Collector
    from nnkcli.evaluation.scoring import ChunkResult, MethodChunk

    labels = np.array([0, 1, -1, 0, 1])
    collect = _Collector(n=5, k=3, labels=labels, n_classes=2)
    theta = np.array([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ids = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2]])  # row 1: 0.3 on unlabelled row 2
    knn = np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    chunk = ChunkResult(start=0, ids=ids, sims=np.zeros((5, 3)), labels=labels)
    chunk.by_method_k[("nnk", 3)] = MethodChunk(top=np.zeros((5, 5), int), scores=np.zeros((5, 2)), theta=theta)
    chunk.by_method_k[("knn", 3)] = MethodChunk(top=np.zeros((5, 5), int), scores=knn)
    collect(chunk)
    # all-zero weights: reliability 0, no suggestion; the unlabelled neighbor's weight counts in the total
    assert collect.reliability[0] == 0 and collect.suggested[0] == -1 and collect.suggested_weight[0] == 0
    assert collect.reliability[1] == pytest.approx(0.0) and collect.suggested[1] == 0
    assert collect.suggested_weight[1] == pytest.approx(0.2 + 0.5)
    assert collect.knn_share[1] == pytest.approx(1 / 3) and collect.knn_label[1] == 0
    assert collect.knn_share[4] == 0 and collect.knn_label[4] == -1


def test_the_torch_backend_scores_the_flipped_labels_too(audit_store):
    """The device keeps its own copy of the labels: ``relabel`` must replace it (torch on the CPU here)."""
    pytest.importorskip("torch")
    from nnkcli.evaluation.options import ScoringOptions

    path, _, _ = audit_store
    on_faiss = audit(path, k=K, inject_noise=0.2, noise_seed=1)
    on_torch = audit(path, k=K, inject_noise=0.2, noise_seed=1, options=ScoringOptions(backend="torch", device="cpu"))
    a, b = np.argsort(on_torch.rows), np.argsort(on_faiss.rows)  # rows of equal reliability may swap: by row
    assert np.array_equal(on_torch.rows[a], on_faiss.rows[b])
    assert np.array_equal(on_torch.labels[a], on_faiss.labels[b])
    np.testing.assert_allclose(on_torch.reliability[a], on_faiss.reliability[b], atol=1e-6)
    np.testing.assert_allclose(on_torch.knn_share[a], on_faiss.knn_share[b], rtol=1e-6)
    assert on_torch.to_dict()["self_test"]["flipped"] == on_faiss.to_dict()["self_test"]["flipped"]


def test_relabel_drops_the_device_copy_of_the_labels():
    torch = pytest.importorskip("torch")
    from nnkcli.evaluation.setup import Evaluation

    with Evaluation.from_arrays(np.eye(4, dtype=np.float32), [0, 1, 0, 1], search=("torch", "cpu", False)) as ev:
        assert ev.searcher.labels_on_device(ev.train_labels).tolist() == [0, 1, 0, 1]
        ev.relabel(np.array([1, 1, 0, 0]))
        assert ev.searcher.labels_on_device(ev.train_labels).tolist() == [1, 1, 0, 0]
        assert isinstance(ev.searcher.labels_on_device(ev.train_labels), torch.Tensor)
