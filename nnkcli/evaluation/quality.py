"""Label-free quality of a split's features: RankMe, α-ReQ, the NNK interpolation error, and LOO top-1.

``quality(store, split=...)`` measures one split of a feature store without needing labels:

- ``rankme``: the effective rank of the features as stored (uncentred), exp of the entropy of
  the normalised singular values (Garrido et al., ICML 2023), on all rows up to
  ``RANKME_MAX_ROWS`` (a seeded sample above);
- ``alpha_req``: the decay of the centred covariance's eigenvalues (minus the slope of
  log λᵢ against log i for i = 10..100; 1 is the healthy value), over all rows;
- ``nnk_interpolation_error``: how well each row is reconstructed, in the kernel's feature
  space, from the NNK polytope of its k nearest *other* rows, ``1 - 2 gᵀθ + θᵀGθ``;
- where the split is labelled, the leave-one-out top-1 of NNK and weighted k-NN.

The spectrum is accumulated by blocks of rows in float64 (d × d matrices, never n × d); the
interpolation error comes from the same streamed search and exact, certified NNK solve as
``classify --query-split S --train-split S --exclude-self`` (``nnkcli.evaluation.streaming``).

Examples
--------
>>> result = quality(demo_store, split="train", k=10)   # demo_store: a feature store's path
>>> sorted(result.summary)
['alpha_req', 'loo_knn_top1', 'loo_nnk_top1', 'nnk_interpolation_error', 'rankme']
>>> result.summary["alpha_req"] is None   # the demo store's 8 dimensions: fewer than 100 eigenvalues
True
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np

from nnkcli.errors import SettingName
from nnkcli.evaluation.results import DocumentResult

#: each metric and the direction in which it is better (docs, history and gates)
QUALITY_METRICS: dict[str, str] = {
    "rankme": "higher",
    "alpha_req": "closer to 1",
    "nnk_interpolation_error": "lower",
    "loo_nnk_top1": "higher",
    "loo_knn_top1": "higher",
}
#: the metrics a gate can check (--gate-metric), each with a direction "higher"/"lower"
GATE_METRICS: dict[str, str] = {
    "rankme": "higher",
    "nnk_interpolation_error": "lower",
    "loo_nnk_top1": "higher",
    "loo_knn_top1": "higher",
}
#: RankMe's rows: all up to this many (the paper's 25,600), a seeded random sample above
RANKME_MAX_ROWS = 25_600
#: RankMe's smoothing of the normalised singular values (the paper's epsilon)
RANKME_EPS = 1e-7
#: α-ReQ's fit: eigenvalues i = 10..100 (1-based, inclusive)
ALPHA_REQ_RANGE = (10, 100)
#: bytes of rows per block of the spectrum pass
SPECTRUM_BLOCK_BYTES = 32 * 2**20
SCHEMA_VERSION = 1


class QualityResult(DocumentResult):
    """What :func:`quality` returns: a read-only mapping over its JSON-able document.

    ``to_dict()`` is the document (``--format json``); ``summary`` its flat dict of the five
    metrics, what a history entry records.
    """

    @property
    def summary(self) -> dict:
        """``{"rankme", "alpha_req", "nnk_interpolation_error" (the mean), "loo_nnk_top1", "loo_knn_top1"}``."""
        return self.document["summary"]

    def __repr__(self) -> str:
        return f"QualityResult(store={self.document.get('store')!r}, split={self.document.get('split')!r})"


# -- the spectrum: RankMe and α-ReQ ------------------------------------------------------------------
def rankme(singular_values: np.ndarray, eps: float = RANKME_EPS) -> float:
    """RankMe of a matrix from its singular values ``s`` (m,): ``exp(-Σ pᵢ log pᵢ)``, ``pᵢ = sᵢ / Σ s + eps``.

    Garrido, Balestriero, Najman and LeCun, "RankMe: Assessing the downstream performance of
    pretrained self-supervised representations by their rank", ICML 2023 (their eq. 1: the
    singular values of the embeddings as they are, not centred, and ``eps = 1e-7``). It lies
    in [1, m]: higher is better (a collapsed representation has a low rank).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return 1.0  # all-zero features: rank one at most (and no direction at all)
    p = s / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def alpha_req(eigenvalues: np.ndarray, fit: tuple[int, int] = ALPHA_REQ_RANGE) -> float | None:
    """α-ReQ: minus the least-squares slope of ``log λᵢ`` against ``log i``, i = ``fit[0]..fit[1]`` (1-based).

    ``eigenvalues`` (d,) of the centred covariance, in any order (sorted decreasing here).
    None when there are fewer than ``fit[1]`` eigenvalues (d < 100), or fewer than that many
    above rounding (a covariance of rank < 100: fewer than 101 rows, or collapsed features):
    the log of a zero eigenvalue has no slope. 1 is the healthy decay (Agrawal et al., "α-ReQ:
    Assessing representation quality in self-supervised learning by measuring eigenspectrum
    decay", NeurIPS 2022); far below 1 is a flat, noisy spectrum, far above a collapsing one.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    lo, hi = fit
    if lam.size < hi or not lam[0] > 0:
        return None
    part = lam[lo - 1 : hi]
    if not (part > lam[0] * lam.size * np.finfo(np.float64).eps).all():
        return None
    x = np.log(np.arange(lo, hi + 1, dtype=np.float64))
    y = np.log(part)
    x = x - x.mean()
    slope = float(np.dot(x, y - y.mean()) / np.dot(x, x))
    return -slope


def spectrum(split, *, max_rows: int | None = None, seed: int = 0) -> dict:
    """One pass over ``split`` by blocks: RankMe's singular values and the centred covariance's eigenvalues.

    ``split`` has ``n``, ``dim``, ``read(start, stop)`` (float32 rows). The singular values of
    the RankMe rows X (m × d, as stored) are the square roots of the eigenvalues of XᵀX (d × d),
    accumulated in float64 over blocks of rows, so nothing of size n × d is held; the top
    min(m, d) are kept (numpy's SVD of X returns that many). The covariance is accumulated the
    same way, from the rows less the first block's mean (a shift that keeps the float64 sums
    free of cancellation when the mean is far from zero), over every row.

    Returns
    -------
    dict with ``singular_values`` (min(m, d),) float64 decreasing, ``rankme_rows`` m,
    ``eigenvalues`` (d,) float64 decreasing (the covariance, divided by n - 1), ``n``.
    """
    from nnkcli.evaluation.selection import selection_rows

    n, d = int(split.n), int(split.dim)
    max_rows = RANKME_MAX_ROWS if max_rows is None else max_rows
    picked = selection_rows(n, max_rows, seed) if n > max_rows else None
    raw = np.zeros((d, d))  # XᵀX of the RankMe rows
    shifted = np.zeros((d, d))  # Σ (x - c)(x - c)ᵀ over all rows
    total = np.zeros(d)  # Σ (x - c)
    centre = None
    step = max(1, SPECTRUM_BLOCK_BYTES // (8 * max(1, d)))
    for start in range(0, n, step):
        block = np.asarray(split.read(start, min(start + step, n)), dtype=np.float64)
        if centre is None:
            centre = block.mean(axis=0)
        if picked is None:
            raw += block.T @ block
        else:
            mine = picked[np.searchsorted(picked, start) : np.searchsorted(picked, start + len(block))] - start
            if mine.size:
                sub = block[mine]
                raw += sub.T @ sub
        block -= centre
        shifted += block.T @ block
        total += block.sum(axis=0)
    m = n if picked is None else int(picked.size)
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(raw)[::-1][: min(m, d)], 0.0, None))
    if n > 1:
        cov = (shifted - np.outer(total, total) / n) / (n - 1)
        eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    else:
        eig = np.zeros(d)
    return {"singular_values": sv, "rankme_rows": m, "eigenvalues": eig, "n": n, "max_rows": max_rows}


# -- the NNK interpolation error -------------------------------------------------------------------
def interpolation_errors(theta: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Per row, ``1 - 2 gᵀθ + θᵀGθ``: the squared distance, in the cosine kernel's feature space,
    from a row to the NNK interpolation of its neighbors, for the *optimal* weights θ.

    Parameters
    ----------
    theta : (B, k) float64 exact NNK weights (zero off the support, zero for missing neighbors)
    sims : (B, k) float64 cosine similarities of the row to its neighbors

    With the kernel K(x, y) = (1 + cos)/2, g = (1 + sims)/2. At the optimum the KKT conditions
    give (Gθ - g)ⱼ = 0 on the support (θⱼ > 0), so θᵀGθ = gᵀθ and the error is ``1 - gᵀθ``:
    no neighbor vector is read again. The exact solver certifies |(Gθ - g)ⱼ| <= 1e-8 (relative)
    on the support, so the identity holds to that order, far below the error's own spread (the
    tests check it against scipy's NNLS and the full formula). Not valid for the pruning solver's
    approximate weights, which :func:`quality` never uses. The error is in [0, 1] (θ = 0 gives 1);
    rounding below 0 is clipped.
    """
    theta = np.asarray(theta, dtype=np.float64)
    on = theta > 0
    g = 0.5 * (1.0 + np.where(on, np.asarray(sims, dtype=np.float64), 0.0))
    return np.maximum(1.0 - np.einsum("bk,bk->b", g, theta), 0.0)


def t_interval(values: np.ndarray, confidence: float) -> list:
    """Student-t interval of the mean of ``values`` at ``confidence``: ``[low, high]`` (None when n < 2)."""
    from scipy.special import stdtrit  # the t quantile (scipy.stats takes a second to import)

    n = int(values.size)
    if n < 2:
        return [None, None]
    mean = float(values.mean())
    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0) * values.std(ddof=1) / math.sqrt(n))
    return [mean - half, mean + half]


def error_summary(errors: np.ndarray, confidence: float) -> dict:
    """The distribution of the per-row errors: mean, median, quantiles, the t interval of the mean, n."""
    if errors.size == 0:
        return {**dict.fromkeys(("mean", "median", "q05", "q25", "q75", "q95")), "ci": [None, None], "n": 0}
    q05, q25, q50, q75, q95 = (float(v) for v in np.quantile(errors, [0.05, 0.25, 0.5, 0.75, 0.95]))
    return {
        "mean": float(errors.mean()),
        "median": q50,
        "q05": q05,
        "q25": q25,
        "q75": q75,
        "q95": q95,
        "ci": t_interval(errors, confidence),
        "n": int(errors.size),
    }


def one_k(value, name: str | SettingName = "k") -> int:
    """One k >= 1 (an int, or a k SPEC of one value such as ``"50"``); ``OptionError`` otherwise."""
    from nnkcli.errors import OptionError
    from nnkcli.evaluation.kspec import check_k_values

    ks = check_k_values(value, name)
    if len(ks) != 1:
        raise OptionError(name, value, "quality takes one k", hint="e.g. --k 50")
    return ks[0]


# -- the whole measurement -------------------------------------------------------------------------
def quality(
    store_path: str | os.PathLike,
    *,
    split: str = "val",
    k: int = 50,
    queries: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    confidence: float = 0.95,
    progress_factory: Callable | None = None,
) -> QualityResult:
    """Label-free quality of ``split``'s features (and its leave-one-out top-1 where it is labelled).

    Parameters
    ----------
    store_path : path-like
        The feature store.
    split : str, default="val"
        The split measured; its rows are searched against its other rows (leave-one-out).
    k : int, default=50
        Neighbors of each row for the NNK interpolation and the LOO classifiers (at most n - 1).
    queries : int or None, default=None
        Rows whose interpolation error (and LOO top-1) is computed: a seeded random sample of
        this many, or all rows (None, or at least the split's rows).
    seed : int, default=0
        Seed of the query sample and of RankMe's row sample (more than 25,600 rows).
    threads : int or None, default=None
        Worker threads (``ScoringOptions.threads``).
    confidence : float, default=0.95
        Level of the t interval of the mean error and of the Wilson intervals of the top-1.
    progress_factory : callable, optional
        ``progress_factory(total, description)``: a context manager yielding ``advance(n)``.

    Returns
    -------
    QualityResult
        ``.to_dict()`` the document, ``.summary`` the five metrics (top-1 in %).

    Raises
    ------
    StoreError
        The store or the split is missing.
    OptionError
        ``k``, ``queries`` or ``seed`` is not a valid value (k < 1, several k, queries < 1).
    InputError
        k is larger than the split allows (n - 1), or a row is all-zero.
    """
    from nnkcli.evaluation.options import DataOptions, ScoringOptions
    from nnkcli.evaluation.selection import selection_rows
    from nnkcli.evaluation.setup import open_evaluation
    from nnkcli.evaluation.streaming import evaluate_chunks
    from nnkcli.settings import optional_count
    from nnkcli.settings import seed as check_seed

    started = time.perf_counter()
    k = one_k(k)
    opts = ScoringOptions(
        methods=("nnk", "knn"), k_values=(k,), exclude_self=True, threads=threads, confidence=confidence
    )
    queries = optional_count(queries, SettingName("queries", "--queries"))
    seed = check_seed(seed, SettingName("seed", "--seed"))
    data = DataOptions(train_split=split, query_split=split)
    ev = open_evaluation(store_path, opts, data, progress_factory)
    with ev:
        opened_s = time.perf_counter() - started
        n = int(ev.train.n)
        ev.check_k(opts)
        t0 = time.perf_counter()
        spec = spectrum(ev.train, seed=seed)
        spectrum_s = time.perf_counter() - t0

        if queries is None or queries >= n:
            target, run_opts = ev, opts
        else:  # the sampled rows as queries, each left out of its own search (as --select-on train does)
            from nnkcli.evaluation.selection import subset_evaluation

            rows = selection_rows(n, queries, seed)
            target, run_opts = subset_evaluation(ev, rows), opts.replace(exclude_self=False)
        pieces: list[np.ndarray] = []
        error_s = [0.0]

        def on_chunk(res) -> None:
            t = time.perf_counter()
            pieces.append(interpolation_errors(res.by_method_k[("nnk", k)].theta, res.sims))
            error_s[0] += time.perf_counter() - t

        n_queries = target.rows[1] - target.rows[0]
        if progress_factory is not None:
            with progress_factory(n_queries, "interpolating") as advance:
                accs, timing = evaluate_chunks(target, run_opts, progress=advance, on_chunk=on_chunk)
        else:
            accs, timing = evaluate_chunks(target, run_opts, on_chunk=on_chunk)
        errors = np.concatenate(pieces) if pieces else np.zeros(0)
        doc = _document(ev, opts, spec, errors, accs, target.query_labels, queries=queries, seed=seed)
    timing.update(
        spectrum_s=round(spectrum_s, 4),
        error_s=round(error_s[0], 4),
        evaluate_s=timing.get("total_s"),
        index_s=round(opened_s, 4),
        total_s=round(time.perf_counter() - started, 4),
    )
    doc["timing"] = timing
    return QualityResult(doc)


def _document(ev, opts, spec: dict, errors: np.ndarray, accs: dict, labels, *, queries, seed) -> dict:
    (k,) = opts.k_values
    rm = rankme(spec["singular_values"])
    ar = alpha_req(spec["eigenvalues"])
    loo = None
    if (np.asarray(labels) >= 0).any():
        loo = {}
        for method in ("nnk", "knn"):
            row = accs[(method, k)].result(confidence=opts.confidence)
            loo[method] = {"top1": row["top1"], "top1_ci": row["top1_ci"], "n": row["n_queries"]}
    err = error_summary(errors, opts.confidence)
    return {
        "schema_version": SCHEMA_VERSION,
        "store": str(ev.store_path),
        "split": ev.train.name,
        "n_rows": int(ev.train.n),
        "k": k,
        "queries": int(errors.size),
        "rankme": rm,
        "rankme_rows": spec["rankme_rows"],
        "alpha_req": ar,
        "nnk_interpolation_error": err,
        "loo": loo,
        "summary": {
            "rankme": rm,
            "alpha_req": ar,
            "nnk_interpolation_error": err["mean"],
            "loo_nnk_top1": loo["nnk"]["top1"] if loo else None,
            "loo_knn_top1": loo["knn"]["top1"] if loo else None,
        },
        "parameters": {
            "split": ev.train.name,
            "k": k,
            "queries": queries,
            "seed": seed,
            "confidence": opts.confidence,
            "threads": opts.threads,
            "kernel": "cosine",
            "solver": "exact",
            "knn_temperature": opts.temperature,
            "rankme_max_rows": spec["max_rows"],
            "rankme_eps": RANKME_EPS,
            "alpha_req_range": list(ALPHA_REQ_RANGE),
            "alpha_req_rows": spec["n"],
            "error_interval": "student-t",
            "top1_interval": "wilson",
        },
        "index": ev.index_info,
        "warnings": list(ev.warnings),
    }
