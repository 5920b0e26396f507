"""Renderers of result documents that several commands print: ``classify`` and ``merge`` (a
classification), ``sweep`` and ``merge`` (a sweep), ``compare``. Each takes the document the core
returned and the output format, and writes it with ``nnkcli.output.render``.
"""

from __future__ import annotations

from nnkcli.output import Column, render


# -- a classification (classify, merge) -------------------------------------------------------
def result_columns(include_support: bool = True) -> list[Column]:
    cols = [
        Column("method", justify="left"),
        Column("k"),
        Column("top1", "top-1 %", ".2f", ci="top1_ci"),
        Column("top5", "top-5 %", ".2f", ci="top5_ci"),
        Column("balanced_accuracy", "balanced %", ".2f", ci="balanced_accuracy_ci"),
        Column("n_queries", "queries"),
    ]
    if include_support:
        cols.append(Column("support_mean", "nnk support", ".1f"))
    return cols


def classify_caption(doc: dict) -> str:
    t = doc["timing"]
    parts = [f"{doc['n_queries']} queries vs {doc['n_train']} train rows", f"search {t['search_s']:.2f}s"]
    if "nnk_s" in t and any(r["method"] == "nnk" for r in doc["results"]):
        parts.append(f"nnk {t['nnk_s']:.2f}s")
    for r in doc["results"]:
        if "kkt_failure_fraction" in r:
            parts.append(
                f"pruning solver: {100 * r['kkt_failure_fraction']:.1f}% of queries fail the exact KKT "
                f"certificate, mean objective gap {r['objective_gap_mean']:.3g}"
            )
    if doc.get("n_unlabelled"):
        parts.append(f"{doc['n_unlabelled']} unlabelled queries not scored")
    return "; ".join(parts)


def render_classification(doc: dict, fmt: str, per_class: bool = False) -> None:
    """A classification document: one row per method, or with ``per_class`` (table and CSV; JSON
    always has everything) the per-class rows after each method's summary row."""
    rows = doc["results"]
    if per_class and fmt != "json":
        render_per_class(doc, fmt)
    else:
        render(
            doc,
            fmt=fmt,
            columns=result_columns("nnk" in [r["method"] for r in rows]),
            rows=rows,
            caption=classify_caption(doc),
        )


def render_per_class(doc: dict, fmt: str) -> None:
    """One row per (method, class) after the summary rows: table and CSV."""
    rows = []
    for r in doc["results"]:
        rows.append(
            {
                "method": r["method"],
                "k": r["k"],
                "class": "(all)",
                "n": r["n_queries"],
                "top1": r["top1"],
                "top1_ci": r["top1_ci"],
                "top5": r["top5"],
                "top5_ci": r["top5_ci"],
                "balanced_accuracy": r["balanced_accuracy"],
                "balanced_accuracy_ci": r["balanced_accuracy_ci"],
            }
        )
        for name, pc in r.get("per_class", {}).items():
            rows.append(
                {
                    "method": r["method"],
                    "k": r["k"],
                    "class": name,
                    "n": pc["n"],
                    "top1": pc["top1"],
                    "top1_ci": pc["top1_ci"],
                }
            )
    columns = [
        Column("method", justify="left"),
        Column("k"),
        Column("class", justify="left"),
        Column("n"),
        Column("top1", "top-1 %", ".2f", ci="top1_ci"),
        Column("top5", "top-5 %", ".2f", ci="top5_ci"),
        Column("balanced_accuracy", "balanced %", ".2f", ci="balanced_accuracy_ci"),
    ]
    render(doc, fmt=fmt, columns=columns, rows=rows, caption=classify_caption(doc))


# -- a sweep (sweep, merge) --------------------------------------------------------------------
def _is(entry: dict | None, row: dict) -> bool:
    """Does the best/selected ``entry`` of a method name this result ``row``'s (k, T)?"""
    if not entry:
        return False
    return entry["k"] == row["k"] and entry.get("temperature") == row.get("temperature")


def sweep_table(doc: dict, fmt: str) -> dict:
    methods = doc["parameters"]["methods"]
    best, selected = doc["best"], doc.get("selected", {})
    temps = doc["parameters"].get("temperature_grid") or [doc["parameters"]["temperature"]]
    grid = len(temps) > 1

    def mark(r) -> str:
        b = best.get(r["method"], {})
        if _is(b, r):
            return "*"
        same_t = b.get("temperature") == r.get("temperature")
        return "~" if same_t and r["k"] in b.get("tied_k", ()) else ""

    if fmt == "csv":  # one row per (method, k[, T])
        rows = [
            dict(r, best=(mark(r) == "*"), tied_with_best=(mark(r) == "~"), selected=_is(selected.get(r["method"]), r))
            for r in doc["results"]
        ]
        columns = (
            [Column("method"), Column("k")]
            + ([Column("temperature")] if grid else [])
            + [
                Column("top1", ci="top1_ci"),
                Column("top5", ci="top5_ci"),
                Column("balanced_accuracy", ci="balanced_accuracy_ci"),
                Column("n_queries"),
                Column("support_mean"),
                Column("best"),
                Column("tied_with_best"),
            ]
        )
        if selected:
            columns.append(Column("selected"))
        return {"columns": columns, "rows": rows}
    # table: one row per k, methods (and kNN temperatures) side by side; * = best on the
    # query split, ~ = tied with it, sel = chosen on train by leave-one-out
    by_k: dict = {}
    for r in doc["results"]:
        row = by_k.setdefault(r["k"], {"k": r["k"]})
        name = f"knn@{r['temperature']:g}" if (grid and r["method"] == "knn") else r["method"]
        lo, hi = r.get("top1_ci") or (None, None)
        ci = f" ±{(hi - lo) / 2:.2f}" if lo is not None and hi is not None and lo == lo and hi == hi else ""
        marks = (mark(r) or " ") + (" sel" if _is(selected.get(r["method"]), r) else "")
        row[f"{name}_top1"] = f"{r['top1']:.2f}{ci}{marks}" if r["top1"] == r["top1"] else "-" + marks.rstrip()
        row[f"{name}_top5"] = r["top5"]
        row[f"{name}_top5_ci"] = r.get("top5_ci")
        if r["method"] == "nnk":
            row["support"] = r.get("support_mean")
    columns = [Column("k")]
    for m in methods:
        for name in [f"knn@{t:g}" for t in temps] if (m == "knn" and grid) else [m]:
            label = name.replace("knn@", "knn T=")
            columns += [  # a table too wide for the terminal is split between groups, never inside one
                Column(f"{name}_top1", f"{label} top-1 %", group=name),
                Column(f"{name}_top5", f"{label} top-5 %", ".2f", ci=f"{name}_top5_ci", group=name),
            ]
    if "nnk" in methods:
        columns.append(Column("support", "nnk support", ".1f"))
    t = doc["timing"]
    level = f"{100 * doc['parameters'].get('confidence', 0.95):g} %"
    alpha = next((b["alpha"] for b in best.values() if "alpha" in b), None)
    caption = f"± half-width of the {level} interval; * best k per method on the query split (optimistic)"
    if alpha is not None:
        caption += f"; ~ not significantly below the best (McNemar p >= {alpha:g}); smallest such k: " + ", ".join(
            f"{m} k={b['recommended_k']}" for m, b in best.items()
        )
    if selected:
        s = doc["selection"]
        caption += f"\nsel = chosen by leave-one-out top-1 on {s['queries']} rows of '{s['split']}': " + ", ".join(
            f"{m} k={e['k']}" + (f" T={e['temperature']:g}" if "temperature" in e else "") for m, e in selected.items()
        )
    caption += (
        f"\n{doc['n_queries']} queries vs {doc['n_train']} train rows; "
        f"search {t['search_s']:.2f}s, total {t['total_s']:.2f}s"
    )
    nnk_rows = [r for r in doc["results"] if r["method"] == "nnk" and "kkt_failure_fraction" in r]
    if nnk_rows:
        worst = max(nnk_rows, key=lambda r: r["kkt_failure_fraction"])
        caption += (
            f"\npruning solver: up to {100 * worst['kkt_failure_fraction']:.1f} % of queries fail the exact "
            f"KKT certificate (k={worst['k']}, mean objective gap {worst['objective_gap_mean']:.3g})"
        )
    return {"columns": columns, "rows": list(by_k.values()), "caption": caption}


def render_sweep(doc: dict, fmt: str) -> None:
    """A sweep document: one row per k (table), one per (method, k[, T]) (CSV), or the JSON."""
    render(doc, fmt=fmt, **sweep_table(doc, fmt))


# -- a comparison (compare) --------------------------------------------------------------------
def render_comparison(doc: dict, fmt: str, per_class: bool = False) -> None:
    """A comparison of A and B: the two sides and the verdict, or with ``per_class`` the per-class
    rows (which JSON also carries only then)."""
    doc_out = doc if per_class else {key: v for key, v in doc.items() if key != "per_class"}
    if fmt == "json":
        render(doc_out, fmt=fmt, columns=[], rows=[])
    elif per_class:
        render(doc_out, fmt=fmt, columns=per_class_columns(), rows=doc["per_class"], caption=doc["verdict"])
    else:
        render(doc_out, fmt=fmt, columns=side_columns(), rows=[doc["a"], doc["b"]], caption=comparison_caption(doc))


def side_columns() -> list[Column]:
    return [
        Column("label", "side", justify="left"),
        Column("source", justify="left"),
        Column("method", justify="left"),
        Column("k"),
        Column("top1", "top-1 %", ".2f", ci="top1_ci"),
        Column("top5", "top-5 %", ".2f", ci="top5_ci"),
        Column("n", "queries"),
    ]


def per_class_columns() -> list[Column]:
    return [
        Column("class", justify="left"),
        Column("n"),
        Column("a", "A top-1 %", ".2f", ci="a_ci"),
        Column("b", "B top-1 %", ".2f", ci="b_ci"),
        Column("delta", "B - A", "+.2f"),
    ]


def comparison_caption(doc: dict) -> str:
    d, m, t5 = doc["difference"], doc["mcnemar"], doc["top5"]
    level = f"{100 * doc['confidence']:g} %"
    return (
        f"top-1 B - A = {d['points']:+.2f} points, {level} CI [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] "
        f"(paired bootstrap, {d['bootstrap']} resamples, seed {d['seed']}); McNemar: A only {m['a_only']}, "
        f"B only {m['b_only']}, p = {m['p_value']:.4g}\n"
        f"top-5 B - A = {t5['difference']['points']:+.2f} points, {level} CI "
        f"[{t5['difference']['ci'][0]:+.2f}, {t5['difference']['ci'][1]:+.2f}]; McNemar p = "
        f"{t5['mcnemar']['p_value']:.4g}\n"
        f"{doc['verdict']}"
    )


# -- quality metrics in a history (evaluate, history) -----------------------------------------
#: header and table format of each quality metric recorded by ``nnk evaluate --quality``
QUALITY_HEADERS = {
    "rankme": ("RankMe", ".2f"),
    "alpha_req": ("alpha-ReQ", ".3f"),
    "nnk_interpolation_error": ("NNK interp. error", ".4f"),
    "loo_nnk_top1": ("LOO nnk top-1 %", ".2f"),
    "loo_knn_top1": ("LOO knn top-1 %", ".2f"),
}


def quality_columns(metrics) -> list[Column]:
    """One column per quality metric (row keys: the metric names), kept together in one table."""
    columns = []
    for m in metrics:
        header, spec = QUALITY_HEADERS.get(m, (m, ".4g"))
        columns.append(Column(m, header, spec, group="quality"))
    return columns
