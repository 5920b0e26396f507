"""knn_scores / nnk_scores / topk_classes / topk_hits against naive per-query loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli import knn_scores, nnk_scores, topk_classes, topk_hits
from nnkcli.errors import InputError

FAST = settings(max_examples=50, deadline=None)


def naive_knn(sims, labels, C, weighting, T):
    out = np.zeros((len(sims), C))
    for b in range(len(sims)):
        for s, y in zip(sims[b], labels[b]):
            if y < 0:
                continue
            w = {"exp": math.exp(s / T), "similarity": s, "uniform": 1.0}[weighting]
            out[b, y] += w
    return out


def naive_nnk(theta, labels, C):
    out = np.zeros((len(theta), C))
    for b in range(len(theta)):
        total = sum(theta[b])
        for t, y in zip(theta[b], labels[b]):
            if y >= 0 and total > 0:
                out[b, y] += t / total
    return out


def naive_top(scores, k):
    out = []
    for row in scores:
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))  # ties: lower id first
        top = [c for c in ranked if row[c] > 0][:k]
        out.append(top + [-1] * (k - len(top)))
    return np.array(out)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(0, 6),
    k=st.integers(1, 20),
    C=st.integers(1, 7),
    weighting=st.sampled_from(["exp", "similarity", "uniform"]),
    T=st.sampled_from([0.07, 0.5, 1.0]),
)
def test_knn_scores_match_naive_loop(seed, B, k, C, weighting, T):
    rng = np.random.default_rng(seed)
    sims = rng.uniform(-1, 1, (B, k))
    labels = rng.integers(-1, C, (B, k))
    got = knn_scores(sims, labels, C, weighting=weighting, temperature=T)
    assert got.shape == (B, C) and got.dtype == np.float64
    np.testing.assert_allclose(got, naive_knn(sims, labels, C, weighting, T), rtol=1e-12)


def test_knn_default_is_dino_exp_weighting_with_t_0_07():
    sims = np.array([[0.9, 0.8, 0.1]])
    labels = np.array([[2, 0, 2]])
    expected = np.zeros((1, 3))
    expected[0, 2] = np.exp(0.9 / 0.07) + np.exp(0.1 / 0.07)
    expected[0, 0] = np.exp(0.8 / 0.07)
    np.testing.assert_allclose(knn_scores(sims, labels, 3), expected)


def test_unlabelled_neighbors_get_no_mass():
    sims = np.array([[0.9, 0.8]])
    np.testing.assert_array_equal(knn_scores(sims, np.array([[-1, -1]]), 2), [[0.0, 0.0]])
    np.testing.assert_array_equal(nnk_scores([[0.5, 0.5]], [[-1, 1]], 2), [[0.0, 0.5]])


@FAST
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(0, 6), k=st.integers(1, 20), C=st.integers(1, 7))
def test_nnk_scores_match_naive_loop(seed, B, k, C):
    rng = np.random.default_rng(seed)
    theta = np.where(rng.random((B, k)) < 0.5, 0.0, rng.random((B, k)))
    labels = rng.integers(-1, C, (B, k))
    np.testing.assert_allclose(nnk_scores(theta, labels, C), naive_nnk(theta, labels, C), rtol=1e-12, atol=0)


def test_nnk_scores_all_zero_theta_gives_zero_scores():
    np.testing.assert_array_equal(nnk_scores(np.zeros((2, 3)), np.zeros((2, 3), dtype=int), 4), np.zeros((2, 4)))


@FAST
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(0, 6), C=st.integers(1, 12), k=st.integers(1, 8))
def test_topk_classes_match_naive_ranking(seed, B, C, k):
    rng = np.random.default_rng(seed)
    # few distinct values: many ties and zeros
    scores = rng.choice([-1.0, 0.0, 0.0, 0.5, 1.0, 2.0], size=(B, C))
    top = topk_classes(scores, k)
    assert top.shape == (B, k) and top.dtype == np.int64
    np.testing.assert_array_equal(top, naive_top(scores, k).reshape(B, k))


def test_topk_ties_break_to_lower_class_id_and_zero_scores_are_never_listed():
    scores = np.array([[0.0, 3.0, 1.0, 3.0, 0.0, 1.0]])
    np.testing.assert_array_equal(topk_classes(scores, 5), [[1, 3, 2, 5, -1]])
    # DINO bug #89: with all-zero scores, class 0 must not come out as a "top-5 hit"
    zero = topk_classes(np.zeros((1, 10)), 5)
    np.testing.assert_array_equal(zero, [[-1] * 5])
    assert not topk_hits(zero, np.array([0])).any()


def test_topk_hits_semantics():
    top = np.array([[3, 1, 4, -1, -1], [2, 0, -1, -1, -1], [5, 6, 7, 8, 9], [-1, -1, -1, -1, -1]])
    labels = np.array([1, 2, 0, -1])
    hits = topk_hits(top, labels)
    np.testing.assert_array_equal(hits[:, 0], [False, True, False, False])  # top-1
    np.testing.assert_array_equal(hits[:, 4], [True, True, False, False])  # top-5
    np.testing.assert_array_equal(hits[0], [False, True, True, True, True])  # cumulative
    assert topk_hits(np.zeros((0, 5), dtype=int), np.zeros(0, dtype=int)).shape == (0, 5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: knn_scores(np.ones((2, 3)), np.ones((2, 4), dtype=int), 3), "neighbor_labels must have the shape"),
        (lambda: knn_scores(np.ones((1, 2)), np.array([[0, 3]]), 3), r"must lie in -1\.\.2"),
        (lambda: knn_scores(np.ones((1, 2)), np.array([[0, -2]]), 3), r"must lie in -1\.\.2"),
        (lambda: knn_scores(np.ones((1, 2)), np.array([[0.0, 1.0]]), 3), "must be integers"),
        (lambda: knn_scores(np.ones((1, 2)), np.zeros((1, 2), dtype=int), 0), "n_classes must be at least 1"),
        (lambda: knn_scores(np.ones((1, 2)), np.zeros((1, 2), dtype=int), 2, weighting="cos"), "unknown weighting"),
        (lambda: knn_scores(np.ones((1, 2)), np.zeros((1, 2), dtype=int), 2, temperature=0), "temperature must be"),
        (lambda: knn_scores(np.ones((1, 2)) * 100, np.zeros((1, 2), dtype=int), 2, temperature=1e-3), "overflows"),
        (lambda: nnk_scores(np.array([[-1.0, 1.0]]), np.zeros((1, 2), dtype=int), 2), "non-negative"),
        (lambda: topk_classes(np.array([[np.nan, 1.0]])), "NaN"),
        (lambda: topk_classes(np.ones(3)), r"scores must be \(B, C\)"),
        (lambda: topk_classes(np.ones((1, 3)), k=0), "k must be at least 1"),
        (lambda: topk_hits(np.ones((2, 5), dtype=int), np.ones(3, dtype=int)), "labels"),
    ],
)
def test_bad_input_is_an_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()


def naive_top_inclusive(scores, k):
    """Every class ranked by score, zero-score ones included, ties to the lower id (the peers' rule)."""
    out = []
    for row in scores:
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]
        out.append(ranked + [-1] * (k - len(ranked)))
    return np.array(out, dtype=np.int64).reshape(len(scores), k)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(0, 6),
    n_nb=st.integers(1, 8),
    C=st.integers(1, 12),
    k=st.integers(1, 7),
)
def test_inclusive_top_matches_ranking_oracle_with_ties_and_few_neighbors(seed, B, n_nb, C, k):
    # scores from n_nb neighbors (often < 5 classes with weight), on a coarse grid so ties are common
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, (B, n_nb))
    sims = rng.integers(1, 4, (B, n_nb)) / 4.0
    scores = knn_scores(sims, labels, C, weighting="similarity")
    got = topk_classes(scores, k, rule="inclusive")
    np.testing.assert_array_equal(got, naive_top_inclusive(scores, k))
    if B:
        np.testing.assert_array_equal(topk_classes(scores, k), naive_top(scores, k))  # strict unchanged


def test_inclusive_counts_zero_score_classes_strict_does_not():
    scores = np.array([[0.0, 0.0, 0.7, 0.0, 0.3, 0.0, 0.0]])  # two classes got votes
    assert topk_classes(scores, 5, rule="inclusive").tolist() == [[2, 4, 0, 1, 3]]
    assert topk_classes(scores, 5, rule="strict").tolist() == [[2, 4, -1, -1, -1]]
    labels = np.array([3])  # a zero-score class: a top-5 hit only under the inclusive rule
    assert topk_hits(topk_classes(scores, 5, rule="inclusive"), labels)[0, 4]
    assert not topk_hits(topk_classes(scores, 5), labels)[0, 4]
    with pytest.raises(InputError, match="top-5 rule"):
        topk_classes(scores, 5, rule="loose")


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(0, 5),
    K=st.integers(1, 30),
    C=st.integers(1, 6),
    weighting=st.sampled_from(["exp", "similarity", "uniform"]),
    T=st.sampled_from([0.07, 0.5]),
    data=st.data(),
)
def test_knn_scores_path_is_knn_scores_at_every_k_bit_for_bit(seed, B, K, C, weighting, T, data):
    """A sweep's k-NN scores (one pass over the neighbors) are those of one classify per k, exactly."""
    from nnkcli.numerics.scores import knn_scores_path

    ks = sorted(data.draw(st.sets(st.integers(1, K), min_size=1, max_size=6)))
    rng = np.random.default_rng(seed)
    sims = rng.uniform(-1, 1, (B, K))
    labels = rng.integers(-1, C, (B, K))
    got = knn_scores_path(sims, labels, C, ks, weighting=weighting, temperature=T)
    assert len(got) == len(ks)
    for k, scores in zip(ks, got):
        assert scores.shape == (B, C) and scores.dtype == np.float64
        np.testing.assert_array_equal(
            scores, knn_scores(sims[:, :k], labels[:, :k], C, weighting=weighting, temperature=T)
        )
        np.testing.assert_allclose(scores, naive_knn(sims[:, :k], labels[:, :k], C, weighting, T), rtol=1e-12)


@pytest.mark.parametrize(
    "ks, match", [([], "k_values"), ([3, 3], "k_values"), ([0, 2], "k_values"), ([2, 9], "k_values")]
)
def test_knn_scores_path_refuses_bad_k_values(ks, match):
    from nnkcli.numerics.scores import knn_scores_path

    with pytest.raises(InputError, match=match):
        knn_scores_path(np.zeros((2, 4)), np.zeros((2, 4), dtype=int), 3, ks)
    with pytest.raises(InputError, match="temperature"):
        knn_scores_path(np.zeros((2, 4)), np.zeros((2, 4), dtype=int), 3, [2], temperature=0)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(0, 5),
    C=st.integers(28, 260),
    k=st.integers(1, 8),
    levels=st.sampled_from([3, 50, 0]),
    infinite=st.sampled_from([None, np.inf, -np.inf]),
)
def test_topk_classes_of_many_classes_match_naive_ranking(seed, B, C, k, levels, infinite):
    """From 32 classes on the best are found by repeated maxima: still the naive ranking, ties by class id,
    both rules (coarse scores give ties across the k-th; levels 0: distinct values; infinite scores in a row)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((B, C)) if levels == 0 else rng.integers(-1, levels, (B, C)) / max(1, levels - 1)
    if infinite is not None and B:  # a row of infinite scores but for 2 classes
        scores[0, rng.permutation(C)[: C - 2]] = infinite
    np.testing.assert_array_equal(topk_classes(scores, k), naive_top(scores, k).reshape(B, k))
    np.testing.assert_array_equal(topk_classes(scores, k, rule="inclusive"), naive_top_inclusive(scores, k))
