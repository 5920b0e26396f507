"""Uncertainty of accuracies and paired comparisons (pure numpy/scipy).

- :func:`wilson_interval` — the Wilson score interval of a proportion (top-1, top-5).
- :func:`balanced_bootstrap_interval` — balanced accuracy (mean per-class recall) by a
  stratified bootstrap: every class's queries are resampled within that class.
- :func:`mcnemar_exact` — McNemar's exact test on the discordant queries of two
  classifiers evaluated on the same queries.
- :func:`paired_bootstrap_difference` — the bootstrap interval of the accuracy difference
  B − A, resampling queries (both classifiers see the same resampled queries).
- :func:`draws_and_queries_interval` — the mean accuracy over T random draws of the train rows
  scored on the same Q queries (``nnk fewshot``): both the draws and the queries vary.

Accuracies here are fractions unless a function says "percent".

Both bootstraps are computed through their sufficient statistics, which gives exactly
the distribution of resampling queries at a cost that does not grow with the number of
queries: resampling n queries with replacement draws the counts of the query kinds
from a multinomial. For a paired comparison the kinds are "only A right", "only B
right" and "both or neither" (the difference depends on nothing else); for one class
of the balanced accuracy they are "right" and "wrong", so the class's resampled hits
are Binomial(n_c, hits_c / n_c).
"""

from __future__ import annotations

import math

import numpy as np

# scipy.special, not scipy.stats: importing scipy.stats costs ~0.5 s and pulls in optional
# array libraries; the two functions needed here are plain special functions
from scipy.special import bdtr, ndtri, stdtrit

DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 10_000
BALANCED_BOOTSTRAP = 2_000  # resamples behind the balanced-accuracy interval of every result row
BALANCED_SEED = 0


def check_confidence(confidence: float) -> float:
    """``confidence`` must be a finite number strictly between 0 and 1."""
    c = float(confidence)
    if not (math.isfinite(c) and 0.0 < c < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return c


def z_value(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The two-sided standard-normal quantile: 1.959964 for 95 %."""
    c = check_confidence(confidence)
    return float(ndtri(0.5 + c / 2.0))


def wilson_interval(hits, n, confidence: float = DEFAULT_CONFIDENCE):
    """Wilson score interval of the proportion ``hits / n``.

    Parameters
    ----------
    hits, n : int or array of int
        Successes and trials (``0 <= hits <= n``).
    confidence : float, default=0.95

    Returns
    -------
    low, high : float or ndarray
        Bounds as fractions in [0, 1]; NaN where ``n == 0``. The interval is never empty
        at 0 % or 100 % (unlike the normal approximation): 0 of n gives [0, z²/(n+z²)].
    """
    z = z_value(confidence)
    hits = np.asarray(hits, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = hits / n
        z2 = z * z
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
        low = np.clip(centre - half, 0.0, 1.0)
        high = np.clip(centre + half, 0.0, 1.0)
    # exact ends: the closed form can miss 0 or 1 by a rounding error
    low = np.where(hits == 0, 0.0, low)
    high = np.where(hits == n, 1.0, high)
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def wilson_percent(hits: int, n: int, confidence: float = DEFAULT_CONFIDENCE, digits: int = 4) -> list:
    """``[low, high]`` of :func:`wilson_interval` in percent, rounded; ``[nan, nan]`` when n = 0."""
    low, high = wilson_interval(int(hits), int(n), confidence)
    return [_round_pct(low, digits), _round_pct(high, digits)]


def _round_pct(x: float, digits: int) -> float:
    return round(100.0 * x, digits) if x == x else float("nan")


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap ``samples`` (percentile method)."""
    c = check_confidence(confidence)
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [(1.0 - c) / 2.0, (1.0 + c) / 2.0])
    return float(lo), float(hi)


def balanced_bootstrap_interval(
    class_hits,
    class_total,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    n_boot: int = BALANCED_BOOTSTRAP,
    seed: int = BALANCED_SEED,
) -> tuple[float, float]:
    """Stratified-bootstrap interval of the balanced accuracy (mean per-class recall).

    Parameters
    ----------
    class_hits, class_total : array of int, shape (C,)
        Correct and total labelled queries per class; classes with no query are left out
        (as the balanced accuracy leaves them out).
    confidence : float, default=0.95
    n_boot : int
        Bootstrap resamples.
    seed : int
        The interval is a deterministic function of the counts and the seed.

    Returns
    -------
    low, high : float
        Fractions; NaN when no class has a query.

    Notes
    -----
    Each resample draws every class's queries with replacement *within the class*
    (so the class sizes, and hence the weights of the mean, stay fixed), which is the
    same as drawing class c's hits from Binomial(n_c, hits_c / n_c). The mean of
    per-class Wilson bounds is not an interval for the mean: it ignores that the
    classes' errors partly cancel.

    The binomial draws are made by inversion (:func:`binomial_draws`): one uniform per
    class and resample, looked up in the class's cumulative distribution -- the same
    distribution as numpy's binomial sampler, at a sixth of its cost for 100 classes
    (a 20-k sweep has 40 such intervals).
    """
    hits = np.asarray(class_hits, dtype=np.int64)
    total = np.asarray(class_total, dtype=np.int64)
    present = total > 0
    if not present.any():
        return float("nan"), float("nan")
    hits, total = hits[present], total[present]
    draws = binomial_draws(total, hits / total, int(n_boot), np.random.default_rng(seed))
    samples = (draws / total[:, None]).mean(axis=0)
    return percentile_interval(samples, confidence)


def binomial_draws(n: np.ndarray, p: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of Binomial(n_c, p_c) for each class c, by inversion: an int64 array (C, size).

    Row c is ``searchsorted(F_c, u, side="right")`` for ``size`` uniforms u in [0, 1): the
    smallest j with F_c(j) > u, where F_c is the binomial's cumulative distribution
    (``scipy.special.bdtr``), its last value set to exactly 1 so that every draw is at most n_c.
    """
    n = np.asarray(n, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    u = rng.random((n.size, int(size)))
    ends = np.cumsum(n + 1)
    j = np.arange(int(ends[-1]) if n.size else 0) - np.repeat(ends - n - 1, n + 1)
    cdf = bdtr(j, np.repeat(n, n + 1), np.repeat(p, n + 1))
    cdf[ends - 1] = 1.0
    draws = np.empty(u.shape, dtype=np.int64)
    for c, (lo, hi) in enumerate(zip((ends - n - 1).tolist(), ends.tolist(), strict=True)):
        draws[c] = np.searchsorted(cdf[lo:hi], u[c], side="right")
    return draws


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: ``b_only`` out of ``a_only + b_only`` at ½.

    ``a_only``: queries A got right and B wrong; ``b_only``: the reverse. Equals
    ``scipy.stats.binomtest(b_only, a_only + b_only, 0.5).pvalue`` (1.0 when there is no
    discordant query).
    """
    a_only, b_only = int(a_only), int(b_only)
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = a_only + b_only
    if n == 0 or a_only == b_only:
        return 1.0
    # at p = 1/2 the distribution is symmetric: both tails are the same size
    return float(min(1.0, 2.0 * bdtr(min(a_only, b_only), n, 0.5)))


def paired_bootstrap_difference(
    a_only: int,
    b_only: int,
    n: int,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of acc(B) − acc(A) over ``n`` paired queries, as fractions.

    Resampling the n queries with replacement, the difference of one resample is
    ``(b_only* − a_only*) / n`` where ``(a_only*, b_only*, rest*)`` is drawn from
    Multinomial(n, (a_only/n, b_only/n, rest/n)) — exactly the distribution of
    resampling queries. Deterministic for a seed.
    """
    a_only, b_only, n = int(a_only), int(b_only), int(n)
    if n <= 0:
        return float("nan"), float("nan")
    if a_only < 0 or b_only < 0 or a_only + b_only > n:
        raise ValueError("need 0 <= a_only + b_only <= n")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    p = np.array([a_only, b_only, n - a_only - b_only], dtype=np.float64) / n
    counts = rng.multinomial(n, p, size=int(n_boot))
    samples = (counts[:, 1] - counts[:, 0]) / n
    return percentile_interval(samples, confidence)


def draws_and_queries_interval(
    per_try: np.ndarray, per_query: np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float, float]:
    """Interval of the mean accuracy of T random train subsets, all scored on the same Q queries.

    Parameters
    ----------
    per_try : (T,) float, T >= 2
        Each try's accuracy (a fraction): the mean over the queries of its hits.
    per_query : (Q,) float, Q >= 1
        Each query's hit rate over the T tries (its hits / T).
    confidence : float

    Returns
    -------
    low, high, df : the interval (fractions, clipped to [0, 1]) and its degrees of freedom.

    The hits h[q, t] of a crossed design (queries × draws, both random) are
    μ + a_t + b_q + e_qt, so the grand mean m has variance σa²/T + σb²/Q + σe²/(QT). The
    variance across tries s_T² (ddof=1) estimates σa² + σe²/Q and the variance across queries
    of their hit rates s_Q² (ddof=1) estimates σb² + σe²/T, so V = s_T²/T + s_Q²/Q estimates
    Var(m) plus σe²/(QT) (at most 1/(4QT): slightly conservative). The interval is
    m ± t·√V with the Welch–Satterthwaite degrees of freedom of the two terms (T − 1 and
    Q − 1 each); with s_T = 0 it is the queries' t interval, with Q large the tries'.
    When both marginal variances vanish although the hits vary (every try and every query the
    same rate, as in a Latin square), V says nothing; the interval is then Wilson's over the QT
    hits taken as independent (df = inf), never a point. A point (m, m, inf) only where every hit
    is the same (m = 0 or 1).
    """
    c = check_confidence(confidence)
    a = np.asarray(per_try, dtype=np.float64)
    b = np.asarray(per_query, dtype=np.float64)
    T, Q = int(a.size), int(b.size)
    if T < 2 or Q < 1:
        raise ValueError(f"need at least 2 tries and 1 query, got {T} and {Q}")
    m = float(a.mean())
    v_draws = float(a.var(ddof=1)) / T
    v_queries = float(b.var(ddof=1)) / Q if Q > 1 else 0.0
    v = v_draws + v_queries
    if not v > 0:
        if 0.0 < m < 1.0:  # the hits vary, only not by try or by query: the pooled hits' interval
            low, high = wilson_interval(round(m * Q * T), Q * T, c)
            return float(low), float(high), math.inf
        return m, m, math.inf
    terms = v_draws**2 / (T - 1) + (v_queries**2 / (Q - 1) if Q > 1 else 0.0)
    df = v * v / terms if terms > 0 else math.inf
    half = float(stdtrit(df, 0.5 + c / 2.0)) * math.sqrt(v) if math.isfinite(df) else z_value(c) * math.sqrt(v)
    return max(0.0, m - half), min(1.0, m + half), df
