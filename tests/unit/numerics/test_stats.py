"""nnkcli.numerics.stats against scipy.stats and closed forms written here, plus coverage checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy.stats import binom, binomtest, chisquare, norm

from nnkcli.numerics import stats


def wilson_by_root_finding(hits, n, confidence):
    """The Wilson bounds are the p solving |hits/n - p| = z sqrt(p (1 - p) / n)."""
    z = norm.ppf(0.5 + confidence / 2)
    phat = hits / n

    def f(p):
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    eps = 1e-12  # f(phat) = 0 at 0 % and 100 %: bracket the other root only
    low = 0.0 if hits == 0 else optimize.brentq(f, 0.0, phat - eps if hits == n else phat)
    high = 1.0 if hits == n else optimize.brentq(f, phat + eps if hits == 0 else phat, 1.0)
    return low, high


@pytest.mark.parametrize("hits,n", [(0, 10), (10, 10), (0, 1), (1, 1), (1709, 2000), (3, 7), (999_999, 1_000_000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy_and_the_defining_equation(hits, n, confidence):
    low, high = stats.wilson_interval(hits, n, confidence)
    ci = binomtest(hits, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    rlow, rhigh = wilson_by_root_finding(hits, n, confidence)
    assert low == pytest.approx(rlow, abs=1e-9) and high == pytest.approx(rhigh, abs=1e-9)


def test_wilson_at_zero_and_hundred_percent_closed_form():
    z = norm.ppf(0.975)
    n = 50
    assert stats.wilson_interval(0, n) == (0.0, pytest.approx(z * z / (n + z * z), abs=1e-12))
    assert stats.wilson_interval(n, n) == (pytest.approx(n / (n + z * z), abs=1e-12), 1.0)


def test_wilson_at_2000_queries_is_about_1_6_points():
    low, high = stats.wilson_percent(1709, 2000)  # 85.45 %
    assert (high - low) / 2 == pytest.approx(1.545, abs=0.01)
    assert low < 85.45 < high


def test_wilson_of_nothing_is_nan_and_vectorised():
    low, high = stats.wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)
    lows, highs = stats.wilson_interval(np.array([0, 5, 0]), np.array([10, 10, 0]))
    assert lows.shape == (3,) and lows[0] == 0.0 and math.isnan(highs[2])


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, float("nan"), float("inf")])
def test_confidence_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="confidence must be in"):
        stats.wilson_interval(1, 2, bad)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10_000), frac=st.floats(0, 1), confidence=st.floats(0.5, 0.999))
def test_wilson_properties(n, frac, confidence):
    hits = int(round(frac * n))
    low, high = stats.wilson_interval(hits, n, confidence)
    ci = binomtest(hits, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-10) and high == pytest.approx(ci.high, abs=1e-10)
    assert 0.0 <= low <= hits / n <= high <= 1.0
    wider = stats.wilson_interval(hits, n, min(0.9999, confidence + (1 - confidence) / 2))
    assert wider[0] <= low + 1e-15 and wider[1] >= high - 1e-15


@settings(max_examples=300, deadline=None)
@given(a_only=st.integers(0, 400), b_only=st.integers(0, 400))
def test_mcnemar_equals_binomtest(a_only, b_only):
    p = stats.mcnemar_exact(a_only, b_only)
    expected = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (5, 5), (0, 1), (0, 30), (1200, 1330), (10_000, 10_400)])
def test_mcnemar_fixed_cases(a_only, b_only):
    expected = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_paired_bootstrap_is_reproducible_for_a_seed():
    one = stats.paired_bootstrap_difference(40, 66, 2000, n_boot=5000, seed=3)
    assert one == stats.paired_bootstrap_difference(40, 66, 2000, n_boot=5000, seed=3)
    # few resamples: the percentile bounds then depend visibly on the seed
    assert len({stats.paired_bootstrap_difference(40, 66, 2000, n_boot=40, seed=s) for s in range(5)}) > 1
    assert one[0] < 26 / 2000 < one[1]


def test_paired_bootstrap_matches_resampling_queries_by_hand():
    """The multinomial shortcut against the textbook bootstrap: draw query indices, recount."""
    rng = np.random.default_rng(7)
    n = 300
    a = rng.random(n) < 0.8
    b = np.where(rng.random(n) < 0.85, a, ~a)  # correlated with A, as two classifiers are
    n_boot = 20_000
    idx = rng.integers(0, n, size=(n_boot, n))
    naive = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    lo_naive, hi_naive = np.quantile(naive, [0.025, 0.975])
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    lo, hi = stats.paired_bootstrap_difference(a_only, b_only, n, n_boot=n_boot, seed=1)
    # Monte Carlo error of a 2.5 % quantile of 20,000 draws is well under one query (1/300)
    assert lo == pytest.approx(lo_naive, abs=1.5 / n) and hi == pytest.approx(hi_naive, abs=1.5 / n)


def test_paired_bootstrap_covers_the_true_difference_in_about_95_percent_of_seeds():
    """A statistical test with a fixed seed list: 300 synthetic comparisons, known truth."""
    n = 1000
    # joint law of (A right, B right): both 0.70, A only 0.06, B only 0.09, neither 0.15
    probs = np.array([0.70, 0.06, 0.09, 0.15])
    true_diff = 0.09 - 0.06
    covered = 0
    seeds = range(300)
    for seed in seeds:
        rng = np.random.default_rng(10_000 + seed)
        kinds = rng.choice(4, size=n, p=probs)
        a_only, b_only = int((kinds == 1).sum()), int((kinds == 2).sum())
        lo, hi = stats.paired_bootstrap_difference(a_only, b_only, n, n_boot=2000, seed=seed)
        covered += lo <= true_diff <= hi
    coverage = covered / len(seeds)
    assert 0.92 <= coverage <= 0.98, coverage


def test_balanced_bootstrap_matches_stratified_resampling_by_hand():
    rng = np.random.default_rng(5)
    sizes = np.array([40, 120, 15, 70])
    acc = np.array([0.9, 0.6, 0.75, 0.5])
    right = [rng.random(s) < p for s, p in zip(sizes, acc)]
    hits = np.array([r.sum() for r in right])
    n_boot = 20_000
    naive = np.zeros(n_boot)
    for r in right:  # resample each class's queries within the class
        idx = rng.integers(0, r.size, size=(n_boot, r.size))
        naive += r[idx].mean(axis=1)
    naive /= len(right)
    lo_naive, hi_naive = np.quantile(naive, [0.025, 0.975])
    lo, hi = stats.balanced_bootstrap_interval(hits, sizes, n_boot=n_boot, seed=2)
    assert lo == pytest.approx(lo_naive, abs=0.006) and hi == pytest.approx(hi_naive, abs=0.006)
    assert lo < np.mean(hits / sizes) < hi


def test_balanced_bootstrap_covers_the_true_balanced_accuracy():
    sizes = np.array([30, 200, 50, 80, 15])
    acc = np.array([0.9, 0.6, 0.75, 0.5, 0.8])
    covered = 0
    seeds = range(200)
    for seed in seeds:
        rng = np.random.default_rng(20_000 + seed)
        hits = rng.binomial(sizes, acc)
        lo, hi = stats.balanced_bootstrap_interval(hits, sizes, n_boot=1000, seed=seed)
        covered += lo <= acc.mean() <= hi
    assert 0.91 <= covered / len(seeds) <= 0.985


def test_balanced_bootstrap_skips_empty_classes_and_is_deterministic():
    a = stats.balanced_bootstrap_interval([5, 0, 9], [10, 0, 10])
    assert a == stats.balanced_bootstrap_interval([5, 9], [10, 10])
    assert all(math.isnan(x) for x in stats.balanced_bootstrap_interval([0, 0], [0, 0]))


# -- the mean over random draws and random queries (nnk fewshot) ------------------------------------
def crossed_interval_oracle(H, confidence):
    """From the hits H (T draws x Q queries) by loops: s_T^2/T + s_Q^2/Q, Welch-Satterthwaite df, scipy's t."""
    from scipy.stats import t as student

    T, Q = len(H), len(H[0])
    per_try = [sum(row) / Q for row in H]
    per_query = [sum(H[t][q] for t in range(T)) / T for q in range(Q)]
    m = sum(per_try) / T
    s2_t = sum((a - m) ** 2 for a in per_try) / (T - 1)
    s2_q = sum((b - m) ** 2 for b in per_query) / (Q - 1)
    a, b = s2_t / T, s2_q / Q
    df = (a + b) ** 2 / (a * a / (T - 1) + b * b / (Q - 1))
    half = student.ppf(0.5 + confidence / 2, df) * math.sqrt(a + b)
    return max(0.0, m - half), min(1.0, m + half), df


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), T=st.integers(2, 6), Q=st.integers(2, 40), confidence=st.sampled_from([0.9, 0.95])
)
def test_the_draws_and_queries_interval_matches_a_loop(seed, T, Q, confidence):
    H = np.random.default_rng(seed).random((T, Q)) < 0.6
    if H.all() or not H.any():
        return  # no variance at all: a degenerate interval, tested below
    low, high, df = stats.draws_and_queries_interval(H.mean(axis=1), H.mean(axis=0), confidence)
    if np.ptp(H.mean(axis=1)) == 0 and np.ptp(H.mean(axis=0)) == 0:  # a Latin square: no marginal variance
        n, p = H.size, H.mean()
        z = norm.ppf(0.5 + confidence / 2)
        centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        want = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n), math.inf)
    else:
        want = crossed_interval_oracle(H.astype(float).tolist(), confidence)
    assert (low, high, df) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_a_latin_square_of_hits_is_not_a_point():
    """Every try and every query at 2/3 (the hits vary, the marginals do not): once (m, m, inf), a zero-width
    interval from varying hits; now Wilson's over the 9 hits, as if independent."""
    H = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=float)
    low, high, df = stats.draws_and_queries_interval(H.mean(axis=1), H.mean(axis=0), 0.95)
    assert low < 2 / 3 < high and df == math.inf
    assert (low, high) == pytest.approx(stats.wilson_interval(6, 9, 0.95))


def test_the_draws_and_queries_interval_covers_and_the_queries_alone_do_not():
    """Simulated crossed designs (mean 0.5 by construction): near 95 % coverage, where Wilson over the
    queries of the mean (blind to the draws) covers far less."""
    rng = np.random.default_rng(0)
    reps, T, Q = 400, 5, 300
    covered = wilson_covered = 0
    for _ in range(reps):
        p_query = rng.uniform(0.2, 0.8, Q)  # each query's difficulty
        shift = rng.uniform(-0.1, 0.1, T)  # each draw's luck
        H = rng.random((T, Q)) < p_query[None, :] + shift[:, None]
        low, high, _ = stats.draws_and_queries_interval(H.mean(axis=1), H.mean(axis=0))
        covered += low <= 0.5 <= high
        w_low, w_high = stats.wilson_interval(int(H.sum()), H.size)
        wilson_covered += w_low <= 0.5 <= w_high
    assert 0.92 <= covered / reps <= 0.99
    assert wilson_covered / reps < 0.8


def test_the_draws_and_queries_interval_needs_two_tries_and_is_a_point_without_variance():
    with pytest.raises(ValueError, match="2 tries"):
        stats.draws_and_queries_interval(np.array([0.5]), np.array([0.5, 0.5]))
    assert stats.draws_and_queries_interval(np.ones(3), np.ones(10)) == (1.0, 1.0, math.inf)


@pytest.mark.parametrize(("n", "p"), [(1, 0.3), (7, 0.5), (40, 0.93), (120, 0.02), (1000, 0.61)])
def test_binomial_draws_follow_the_binomial_distribution(n, p):
    """Inversion draws against scipy's binomial pmf: a chi-square goodness-of-fit test (an independent oracle)."""
    draws = stats.binomial_draws(np.array([n]), np.array([p]), 40_000, np.random.default_rng(n))[0]
    assert draws.min() >= 0 and draws.max() <= n
    expected = binom.pmf(np.arange(n + 1), n, p) * draws.size
    observed = np.bincount(draws, minlength=n + 1).astype(float)
    keep = expected >= 20  # the rest pooled into one cell
    obs = np.r_[observed[keep], observed[~keep].sum()]
    exp = np.r_[expected[keep], draws.size - expected[keep].sum()]
    assert chisquare(obs, exp).pvalue > 1e-4


@settings(max_examples=60, deadline=None)
@given(
    n=st.lists(st.integers(0, 300), min_size=1, max_size=6),
    p=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_binomial_draws_stay_in_range_and_hit_the_certain_cases(n, p, seed):
    n_arr = np.array(n)
    p_arr = np.array(p[: len(n)])
    draws = stats.binomial_draws(n_arr, p_arr, 50, np.random.default_rng(seed))
    assert draws.shape == (len(n), 50)
    assert (draws >= 0).all() and (draws <= n_arr[:, None]).all()
    assert (draws[p_arr == 0.0] == 0).all()
    assert (draws[p_arr == 1.0] == n_arr[p_arr == 1.0, None]).all()
    again = stats.binomial_draws(n_arr, p_arr, 50, np.random.default_rng(seed))
    assert (draws == again).all()
