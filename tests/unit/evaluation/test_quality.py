"""``nnkcli.evaluation.quality`` against oracles written here from the definitions.

RankMe (Garrido et al., ICML 2023): exp(-Σ pᵢ log pᵢ), pᵢ = sᵢ / Σ s + 1e-7, s the singular values
of the rows as stored (numpy's SVD of the whole matrix). α-ReQ: minus the least-squares slope of
log λᵢ against log i, i = 10..100, λ the centred covariance's eigenvalues (numpy's eigh of the whole
covariance). The NNK interpolation error: per row, brute-force k nearest other rows (cosine, ties by
row id), weights from scipy's NNLS on the feature-space form, 1 - 2 gᵀθ + θᵀGθ from a loop-built G.
The leave-one-out top-1: a loop over rows voting with those weights (NNK) and exp(s / 0.07) (k-NN).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.stats import norm

from nnkcli.errors import InputError, OptionError, StoreError
from nnkcli.evaluation import quality as q
from nnkcli.storage.store import write_split

TOL = 1e-6


# -- oracles -----------------------------------------------------------------------------------------
def rankme_oracle(X):
    s = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-np.sum(p * np.log(p))))


def alpha_req_oracle(X):
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    lam = np.sort(np.linalg.eigh(Xc.T @ Xc / (len(X) - 1))[0])[::-1]
    i = np.arange(10, 101)
    A = np.stack([np.log(i), np.ones(i.size)], axis=1)
    slope = np.linalg.lstsq(A, np.log(lam[9:100]), rcond=None)[0][0]
    return -float(slope)


def unit64(X):
    X = np.asarray(X, dtype=np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float64)


def neighbors_oracle(V, i, k):
    """The k most similar other rows of row i (similarity descending, then row id ascending)."""
    sims = V @ V[i]
    others = [j for j in range(len(V)) if j != i]
    others.sort(key=lambda j: (-sims[j], j))
    ids = np.array(others[:k])
    return ids, sims[ids]


def nnk_oracle(V, i, k):
    """(ids, sims, theta, error) of row i: NNLS weights, then 1 - 2 g'θ + θ'Gθ from a loop-built G."""
    ids, sims = neighbors_oracle(V, i, k)
    Xn = V[ids]
    A = np.vstack([np.ones(k), Xn.T]) / np.sqrt(2)
    b = np.concatenate([[1.0], V[i]]) / np.sqrt(2)
    theta = nnls(A, b, maxiter=100 * k)[0]
    G = np.empty((k, k))
    for a in range(k):
        for c in range(k):
            G[a, c] = (1 + Xn[a] @ Xn[c]) / 2
    g = (1 + sims) / 2
    return ids, sims, theta, 1 - 2 * g @ theta + theta @ G @ theta


def loo_oracle(V, y, rows, k, n_classes, temperature=0.07):
    """Leave-one-out top-1 (%) of NNK and k-NN by a loop over ``rows``."""
    hits = {"nnk": 0, "knn": 0}
    for i in rows:
        ids, sims, theta, _ = nnk_oracle(V, i, k)
        nnk = np.bincount(y[ids], weights=theta, minlength=n_classes)
        knn = np.bincount(y[ids], weights=np.exp(sims / temperature), minlength=n_classes)
        hits["nnk"] += int(np.argmax(nnk) == y[i])
        hits["knn"] += int(np.argmax(knn) == y[i])
    return {m: 100.0 * h / len(rows) for m, h in hits.items()}


def wilson_oracle(hits, n, confidence=0.95):
    z = norm.ppf(0.5 + confidence / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


# -- data ----------------------------------------------------------------------------------------------
def power_law_rows(n, d, seed, *, decay=1.0, offset=0.0):
    """Rows whose covariance spectrum falls as i^-decay, around a mean ``offset`` away from zero."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1) ** (-decay / 2)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return ((rng.normal(size=(n, d)) * scales) @ basis.T + offset).astype(np.float32)


def labelled_rows(n, d, seed, n_classes=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    means = rng.normal(size=(n_classes, d)) * 1.5
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y


def store_of(path, split, X, y=None):
    labels = np.full(len(X), -1) if y is None else y
    write_split(path, split, X, labels, source="test")
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A labelled 12-d split of 150 rows: (path, X, y)."""
    X, y = labelled_rows(150, 12, 0)
    return store_of(tmp_path_factory.mktemp("quality") / "s.h5", "val", X, y), X, y


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """An unlabelled 120-d split of 500 rows with a power-law spectrum far from the origin: (path, X)."""
    X = power_law_rows(500, 120, 1, decay=1.3, offset=20.0)
    return store_of(tmp_path_factory.mktemp("quality") / "w.h5", "train", X), X


# -- the spectrum -----------------------------------------------------------------------------------------
def test_rankme_and_alpha_req_match_the_whole_matrix(wide):
    path, X = wide
    res = q.quality(path, split="train", k=5, queries=20, threads=1)
    assert res["rankme"] == pytest.approx(rankme_oracle(X), rel=TOL)
    assert res["rankme_rows"] == 500
    assert res["alpha_req"] == pytest.approx(alpha_req_oracle(X), rel=TOL)
    assert res["alpha_req"] == pytest.approx(1.3, abs=0.2)  # the decay the rows were drawn with
    assert res.summary["rankme"] == res["rankme"] and res.summary["alpha_req"] == res["alpha_req"]


def test_the_spectrum_is_the_same_from_small_blocks(wide, monkeypatch):
    """Blocks of 3 rows (memory bounded: no read larger) give the whole matrix's numbers."""
    from nnkcli.storage.store import FeatureStore

    path, X = wide
    monkeypatch.setattr(q, "SPECTRUM_BLOCK_BYTES", 3 * 8 * 120)
    with FeatureStore(path) as fs:
        split = fs["train"]
        sizes = []
        read = split.read

        def spy(start, stop):
            sizes.append(stop - start)
            return read(start, stop)

        monkeypatch.setattr(split, "read", spy)
        spec = q.spectrum(split)
    assert max(sizes) == 3 and sum(sizes) == 500
    assert q.rankme(spec["singular_values"]) == pytest.approx(rankme_oracle(X), rel=TOL)
    assert q.alpha_req(spec["eigenvalues"]) == pytest.approx(alpha_req_oracle(X), rel=TOL)


def test_rankme_samples_rows_above_its_limit_seeded(wide, monkeypatch):
    path, X = wide
    monkeypatch.setattr(q, "RANKME_MAX_ROWS", 64)
    res = q.quality(path, split="train", k=5, queries=10, seed=7, threads=1)
    rows = np.sort(np.random.default_rng(7).choice(500, size=64, replace=False))
    assert res["rankme_rows"] == 64
    assert res["rankme"] == pytest.approx(rankme_oracle(X[rows]), rel=TOL)
    assert res["rankme"] != pytest.approx(rankme_oracle(X), rel=1e-3)
    again = q.quality(path, split="train", k=5, queries=10, seed=7, threads=1)
    assert again["rankme"] == res["rankme"]
    assert res["alpha_req"] == pytest.approx(alpha_req_oracle(X), rel=TOL)  # every row, whatever the sample


def test_rankme_counts_min_n_d_singular_values(tmp_path):
    """Fewer rows than dimensions: the SVD has n values, not d (zeros would add 1e-7 terms)."""
    X = np.random.default_rng(2).normal(size=(20, 40)).astype(np.float32)
    path = store_of(tmp_path / "f.h5", "val", X)
    res = q.quality(path, k=3, threads=1)
    assert res["rankme"] == pytest.approx(rankme_oracle(X), rel=TOL)


def test_a_collapsed_split_has_rankme_near_one(tmp_path):
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(200, 1)) * rng.normal(size=(1, 16)) + 1e-4 * rng.normal(size=(200, 16))).astype(np.float32)
    res = q.quality(store_of(tmp_path / "c.h5", "val", X), k=5, threads=1)
    assert res["rankme"] == pytest.approx(rankme_oracle(X), rel=TOL)
    assert res["rankme"] < 1.1


def test_alpha_req_is_none_below_100_dimensions(small):
    res = q.quality(small[0], k=5, threads=1)
    assert res["alpha_req"] is None and res.summary["alpha_req"] is None
    assert q.alpha_req(np.ones(99)) is None
    assert q.alpha_req(np.r_[np.ones(50), np.zeros(60)]) is None  # rank 50: no log of the zeros


def test_alpha_req_of_an_exact_power_law():
    lam = np.arange(1, 151, dtype=float) ** -0.8
    assert q.alpha_req(lam[::-1]) == pytest.approx(0.8, rel=1e-12)


# -- the interpolation error and the leave-one-out top-1 ------------------------------------------------------
def test_interpolation_error_and_loo_match_a_loop_over_rows(small):
    path, X, y = small
    k = 10
    res = q.quality(path, k=k, threads=2)
    V = unit64(X)
    errors = np.array([nnk_oracle(V, i, k)[3] for i in range(len(V))])
    err = res["nnk_interpolation_error"]
    assert err["n"] == res["queries"] == 150 and res["n_rows"] == 150
    assert err["mean"] == pytest.approx(errors.mean(), abs=TOL)
    for key, level in (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95)):
        assert err[key] == pytest.approx(np.quantile(errors, level), abs=TOL), key
    assert 0 < err["mean"] < 1
    # the t interval of the mean
    half = 1.9761 * errors.std(ddof=1) / np.sqrt(150)  # t(149) at 97.5 %
    assert err["ci"] == pytest.approx([errors.mean() - half, errors.mean() + half], abs=1e-4)
    top1 = loo_oracle(V, y, range(len(V)), k, 4)
    for method in ("nnk", "knn"):
        assert res["loo"][method]["top1"] == pytest.approx(top1[method], abs=1e-3)
        hits = round(top1[method] * 1.5)
        assert res["loo"][method]["top1_ci"] == pytest.approx(wilson_oracle(hits, 150), abs=1e-3)
    assert res.summary["loo_nnk_top1"] == res["loo"]["nnk"]["top1"]
    assert res.summary["nnk_interpolation_error"] == err["mean"]


def test_interpolation_errors_row_by_row():
    """On the oracle's own optimal weights (scipy NNLS), 1 - g'θ equals the full 1 - 2 g'θ + θ'Gθ row by row."""
    X, _ = labelled_rows(60, 8, 4)
    V = unit64(X)
    k = 7
    found = [nnk_oracle(V, i, k) for i in range(60)]
    sims = np.stack([f[1] for f in found])
    theta = np.stack([f[2] for f in found])
    expected = np.array([f[3] for f in found])
    assert (theta == 0).any() and (theta > 0).any()  # the supports are proper subsets: the identity is exercised
    np.testing.assert_allclose(q.interpolation_errors(theta, sims), expected, atol=1e-9)
    # a missing neighbor (weight 0, any similarity) changes nothing
    sims_missing = sims.copy()
    sims_missing[theta == 0] = -np.inf
    np.testing.assert_allclose(q.interpolation_errors(theta, sims_missing), expected, atol=1e-9)


def test_query_sample_is_seeded_and_matches_the_loop(small):
    path, X, y = small
    k = 8
    a = q.quality(path, k=k, queries=40, seed=5, threads=1)
    rows = np.sort(np.random.default_rng(5).choice(150, size=40, replace=False))
    V = unit64(X)
    errors = np.array([nnk_oracle(V, i, k)[3] for i in rows])
    assert a["queries"] == 40 and a["nnk_interpolation_error"]["n"] == 40
    assert a["nnk_interpolation_error"]["mean"] == pytest.approx(errors.mean(), abs=TOL)
    top1 = loo_oracle(V, y, rows, k, 4)
    assert a["loo"]["nnk"]["top1"] == pytest.approx(top1["nnk"], abs=1e-3)
    assert a["loo"]["knn"]["top1"] == pytest.approx(top1["knn"], abs=1e-3)
    b = q.quality(path, k=k, queries=40, seed=5, threads=2)
    assert b["nnk_interpolation_error"] == a["nnk_interpolation_error"] and b["loo"] == a["loo"]
    c = q.quality(path, k=k, queries=40, seed=6, threads=1)
    assert c["nnk_interpolation_error"]["mean"] != a["nnk_interpolation_error"]["mean"]
    assert q.quality(path, k=k, queries=1000, threads=1)["queries"] == 150  # more than the rows: all of them


def test_unlabelled_split_has_no_loo(wide):
    res = q.quality(wide[0], split="train", k=5, queries=30, threads=1)
    assert res["loo"] is None
    assert res.summary["loo_nnk_top1"] is None and res.summary["loo_knn_top1"] is None
    assert res.summary["nnk_interpolation_error"] is not None


def test_the_document_has_the_shared_keys(small):
    doc = q.quality(small[0], k=5, threads=1).to_dict()
    for key in ("schema_version", "store", "split", "n_rows", "k", "queries", "rankme", "rankme_rows", "alpha_req",
                "nnk_interpolation_error", "loo", "summary", "parameters", "timing"):  # fmt: skip
        assert key in doc, key
    assert doc["schema_version"] == 1 and doc["split"] == "val" and doc["k"] == 5
    assert set(doc["nnk_interpolation_error"]) >= {"mean", "median", "q05", "q25", "q75", "q95", "ci", "n"}
    assert set(doc["loo"]) == {"nnk", "knn"} and set(doc["loo"]["nnk"]) >= {"top1", "top1_ci"}
    assert list(doc["summary"]) == list(q.QUALITY_METRICS)
    assert set(q.GATE_METRICS) <= set(q.QUALITY_METRICS)
    assert all(v in ("higher", "lower") for v in q.GATE_METRICS.values())


def test_bad_values_are_refused(small):
    path = small[0]
    with pytest.raises(OptionError, match="k"):
        q.quality(path, k=0)
    with pytest.raises(OptionError, match="one k"):
        q.quality(path, k=[5, 10])
    with pytest.raises(OptionError, match="queries"):
        q.quality(path, k=5, queries=0)
    with pytest.raises(InputError, match="k=150"):
        q.quality(path, k=150)  # 150 rows: at most 149 others
    with pytest.raises(StoreError, match="split .test. not found"):
        q.quality(path, split="test")
