"""The result document of ``fewshot``: per (n, method, k[, T]) the tries' accuracies, their mean,
spread and interval; the subsets drawn; what was capped.

Accuracies are percentages (0-100). The standard deviation across tries is the sample one
(ddof = 1). The interval of the mean accounts for the draws and the queries
(``nnkcli.numerics.stats.draws_and_queries_interval``) when there are two tries or more; with
one try (or a subset file) it is Wilson's, over the queries only: the one subset is then fixed.
"""

from __future__ import annotations

import logging

import numpy as np

from nnkcli.numerics import stats

logger = logging.getLogger("nnkcli")

INTERVAL_TRIES = "t over draws and queries (Welch-Satterthwaite)"
INTERVAL_ONE = "wilson over queries (one subset)"


def _pct(x: float) -> float:
    return round(100.0 * float(x), 4)


def summary(hits: list[np.ndarray], confidence: float, what: str) -> dict:
    """Mean, std across tries (ddof=1), interval and per-try values (%) from each try's per-query hits (Q,)."""
    H = np.stack(hits).astype(np.float64)  # (T, Q)
    T, Q = H.shape
    per_try = H.mean(axis=1) if Q else np.full(T, np.nan)
    out: dict = {what: _pct(per_try.mean())}
    out[f"{what}_std"] = _pct(per_try.std(ddof=1)) if T > 1 else None
    if T > 1 and Q:
        low, high, _ = stats.draws_and_queries_interval(per_try, H.mean(axis=0), confidence)
        out[f"{what}_ci"] = [_pct(low), _pct(high)]
    else:
        out[f"{what}_ci"] = stats.wilson_percent(int(H[0].sum()), Q, confidence)
    out[f"{what}_tries"] = [_pct(a) for a in per_try]
    return out


def fewshot_document(
    *,
    store_path,
    train,
    query,
    train_labels,
    query_labels,
    class_names,
    options,
    plan,
    tries,
    seed,
    subset_file,
    subsets,
    scored,
    ids,
    backend,
    warnings,
) -> dict:
    """The JSON-able document of one ``fewshot`` run (see ``nnkcli.evaluation.fewshot``)."""
    results = []
    capped = []
    n_queries = int((query_labels >= 0).sum())
    for n in plan:
        mine = [s for sub, s in zip(subsets, scored, strict=True) if sub["per_class"] == n]
        m = mine[0]["n_rows"]
        big = [k for k in options.k_values if k > m]
        if big:
            capped.append({"per_class": n, "k": big, "k_used": m, "train_rows": m})
            what = f"{n} per class" if n is not None else "the subset"
            logger.info(f"note: {what} gives {m} train rows: k {', '.join(map(str, big))} capped at {m}")
        for method in options.methods:
            temps = options.knn_temperatures if method == "knn" else (None,)
            for k in options.k_values:
                used = min(k, m)
                for t in temps:
                    row: dict = {"per_class": n, "method": method, "k": k, "k_used": used}
                    if t is not None:
                        row["temperature"] = t
                    for j, what in enumerate(("top1", "top5")):
                        row.update(summary([s["hits"][(method, used, t)][j] for s in mine], options.confidence, what))
                    row.update(tries=len(mine), train_rows=m, n_queries=n_queries)
                    results.append(row)
    records = []
    for sub in subsets:
        rows = sub["rows"]
        record = {key: sub[key] for key in ("per_class", "try", "seed")}
        record["n_rows"] = int(rows.size)
        if "short_classes" in sub:
            record["short_classes"] = sub["short_classes"]
        record["rows"] = rows.tolist()
        record["ids"] = [ids[r] for r in rows] if ids is not None else None
        records.append(record)
    labelled = train_labels[train_labels >= 0]
    return {
        "schema_version": 1,
        "store": str(store_path),
        "train_split": train.name,
        "query_split": query.name,
        "n_train": int(train.n),
        "n_queries": int(query.n),
        "n_unlabelled": int(query.n) - n_queries,
        "n_classes": len(class_names),
        "classes_drawn": int(np.unique(labelled).size),
        "per_class": list(plan) if subset_file is None else None,
        "tries": tries,
        "seed": seed if subset_file is None else None,
        "subset_file": str(subset_file) if subset_file is not None else None,
        "k_values": list(options.k_values),
        "k_capped": capped,
        "interval": {
            "method": INTERVAL_TRIES if tries > 1 else INTERVAL_ONE,
            "confidence": options.confidence,
            "std_ddof": 1,
        },
        "index": {**scored[0]["index"], "backend": backend[0]},
        "parameters": options.as_dict(),
        "results": results,
        "subsets": records,
        "warnings": list(warnings),
    }
