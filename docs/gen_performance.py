"""Write docs/performance.md from the benchmark scripts' JSON output in benchmarks/results/.

Every file there is what a script in benchmarks/ wrote with ``--json PATH`` (see
benchmarks/_report.py): the measurements, the machine that made them, the date and the
command. Files live at ``benchmarks/results/<machine kind>/<benchmark>.json``, so each kind of
machine keeps only its latest run of each benchmark; older numbers go to the changelog.

    python docs/gen_performance.py                       # rewrite docs/performance.md
    python docs/gen_performance.py --check               # exit 1 if the page is not what this writes
    python docs/gen_performance.py --record run.json ... # file new runs under their machine kind, then rewrite

tests/docs/test_performance_page.py runs ``--check``'s comparison, so the page cannot drift
from the JSON files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"


def _report_module():
    """benchmarks/_report.py (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("_bench_report", ROOT / "benchmarks" / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine_kind(machine: dict) -> str:
    return _report_module().machine_kind(machine)


def load_results(folder: Path = RESULTS) -> dict[str, dict[str, dict]]:
    """``{machine kind: {benchmark: document}}`` from ``folder/<kind>/<benchmark>.json``."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("*/*.json")):
        doc = json.loads(path.read_text())
        out.setdefault(path.parent.name, {})[doc["benchmark"]] = doc
    return out


def record(paths: list[Path], folder: Path = RESULTS) -> list[Path]:
    """Copy each run's JSON to ``folder/<its machine kind>/<benchmark>.json`` (replacing the older run)."""
    written = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        dest = folder / machine_kind(doc["machine"]) / f"{doc['benchmark']}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        written.append(dest)
    return written


# -- rendering ---------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A markdown table; ``align`` has one letter per column, l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _qps(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _sci(x: float) -> str:
    return f"{x:.0e}"


def cpu_line(m: dict) -> str:
    """The CPU that gave a table's numbers, in one line."""
    ident = ""
    if m.get("cpu_family") and m.get("cpu_model_number"):
        ident = f"family {m['cpu_family']} model {m['cpu_model_number']}, "
    flags = " ".join(m.get("cpu_flags") or []) or "none of interest"
    return f"{m.get('cpu_model')} ({ident}flags: {flags}), {m.get('cores_available')} of {m.get('cores')} cores"


def machine_section(m: dict) -> list[str]:
    blas = "; ".join(
        f"{b.get('prefix') or b.get('internal_api')} {b.get('version')} ({b.get('architecture')} kernels)"
        for b in m.get("blas") or []
    )
    return [
        f"- **CPU**: {cpu_line(m)}",
        f"- **memory**: {m.get('memory_gib')} GiB; **platform**: {m.get('platform')}",
        f"- **Python** {m.get('python')}, **numpy** {m.get('numpy')}, **BLAS**: {blas or 'unknown'}; "
        f"**nnkcli** {m.get('nnkcli')}",
    ]


def shown_command(command: str) -> str:
    """The command as recorded, with the --json destination reduced to its file name."""
    words = command.split()
    for i, word in enumerate(words[:-1]):
        if word == "--json":
            words[i + 1] = Path(words[i + 1]).name
    return " ".join(words)


def _run_line(doc: dict) -> str:
    load = doc["machine"].get("load_average")
    load_text = f"; load average {load[0]:.2f} when it ended" if load else ""
    command = shown_command(doc["command"])
    return f"Run on {doc['date'][:10]} with `{command}`{load_text}. CPU: {cpu_line(doc['machine'])}."


def render_solver(doc: dict) -> list[str]:
    m = doc["measurements"]
    rows = [
        [
            str(r["k"]),
            str(r["d"]),
            _qps(r["ours_qps"]),
            _qps(r["scipy_qps"]),
            _ratio(r["ratio"]),
            f"{r['peak_mib']:.1f}",
            _sci(r["kkt_ours"]),
            _sci(r["kkt_scipy"]),
            _ratio(r["e2e_ratio"]),
            _qps(r["stage_qps"]),
            _qps(r["stage_numpy_qps"]),
            _qps(r["paper_qps"]),
            _ratio(r["stage_ratio"]),
        ]
        for r in m["rows"]
    ]
    header = ["k", "d", "nnk_solve q/s", "scipy loop q/s", "ratio", "peak MiB", "KKT ours", "KKT scipy"]
    header += ["end-to-end ratio", "stage q/s", "numpy engine q/s", "paper loop q/s", "stage / paper"]
    return [
        "### The solver and the NNK stage (`benchmarks/bench_solver.py`)",
        "",
        f"Fashion-MNIST queries and their k nearest training images, {m['n_query']:,} queries per row, best of "
        f"{m['repeats']} interleaved runs; stage engine: {m['engine']}. The baselines run in the same process "
        "and round: a per-query `scipy.optimize.nnls` loop (ratio, end-to-end ratio) and the NNK paper's "
        "per-query pruning loop (stage / paper). Targets at the full size: the solver at least 2x the scipy loop "
        "at k = 50 and 5x at k = 200, the stage at least 3x the paper loop.",
        "",
        *_table(header, rows, "rrrrrrrrrrrrr"),
        "",
        _run_line(doc),
    ]


def _rate(x) -> str:
    return f"{x:.0f}" if x is not None else "–"


def render_pipeline(doc: dict) -> list[str]:
    m = doc["measurements"]
    if "datasets" not in m:  # a run of one store, before the limits were recorded
        return _render_pipeline_store(m, m.get("gemm_peak_1thread_gflops"), m.get("gemm_peak_gflops"), None, doc)
    g = m["gemm_gflops"]
    out = [
        "### End to end (`benchmarks/bench_pipeline.py`)",
        "",
        f"The limits, measured in the same run (best of {len(m['gemm_rounds'])}): float32 GEMM (numpy) "
        f"{_rate(g['float32_1'])} GFLOP/s on one thread, {_rate(g['float32'])} on {m['threads']}; bfloat16 GEMM "
        f"(torch) {_rate(g['bfloat16_1'])} on one thread, {_rate(g['bfloat16'])} on {m['threads']}"
        + (f"; every run with `--search-kernel {m['search_kernel']}`" if m.get("search_kernel") else "")
        + ".",
    ]
    for store in m["datasets"].values():
        out += ["", *_render_pipeline_store(store, g["float32_1"], g["float32"], g.get("bfloat16_1"), None, m)]
    return [*out, "", _run_line(doc)]


def _render_pipeline_store(m: dict, peak1, peak, bf16_1, doc: dict | None, run: dict | None = None) -> list[str]:
    """One store's table and ratios; ``doc``: the whole run (a run of one store), else ``run``'s settings."""
    run = m if run is None else run
    rows = []
    for name, r in m["runs"].items():
        top1 = r.get("top1", {})
        share = r.get("search_share")
        rows.append(
            [
                f"`{name}`",
                f"{r['wall_s']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['timing']['search_s']:.2f}",
                f"{share:.0%}" if share is not None else "–",
                f"{r['timing'].get('nnk_s', 0.0):.2f}",
                f"{top1['nnk']:.2f}" if "nnk" in top1 else "–",
                f"{top1['knn']:.2f}" if "knn" in top1 else "–",
            ]
        )
    store = "Fashion-MNIST raw pixels" if m["dataset"] == "fashion-mnist" else f"{m['dataset']} store"
    intro = (
        f"The real CLI in subprocesses on the {store} ({m['n_train']:,} x {m['dim']} train rows, "
        f"{m['n_query']:,} queries), `--threads {run['threads']}`, the minimum of {run['repeats']} interleaved "
        f"round(s)."
    )
    if doc is not None:
        intro += f" float32 GEMM peak measured in the same run: {peak1:.0f} GFLOP/s on one thread, {peak:.0f} on " + (
            f"{run['threads']}."
        )
    intro += (
        f" A flat search of one thread ran at {m['flat_search_gflops']['nnkcli']:.0f} GFLOP/s with numpy's BLAS and "
        f"{m['flat_search_gflops']['faiss']:.0f} with faiss's own."
    )
    out = [
        "### End to end (`benchmarks/bench_pipeline.py`)" if doc is not None else f"#### {store}",
        "",
        intro,
        "",
        *_table(
            ["run", "wall s", "peak RSS MiB", "search s", "search share", "nnk s", "NNK top-1 %", "k-NN top-1 %"],
            rows,
            "lrrrrrrr",
        ),
        "",
    ]
    ratio_rows = [
        [
            name,
            (f"**{_ratio(r['value'])}**" if r["value"] <= r["target"] else _ratio(r["value"]))
            + (f" (CPU {_ratio(r['cpu'])})" if r.get("cpu") else ""),
            f"≤ {r['target']}x",
        ]
        for name, r in m.get("ratios", {}).items()
    ]
    for k, eff in m.get("search_efficiency", {}).items():
        vs_bf16 = f" ({eff * peak1 / bf16_1:.0%} of bfloat16's)" if bf16_1 and peak1 else ""
        ratio_rows.append([f"search rate at k = {k} / one-thread float32 GEMM", f"{eff:.0%}{vs_bf16}", "≥ 70 %"])
    if m.get("busy"):
        b = m["busy"]
        value = b["busy_s"] / b["idle_s"]
        target = b.get("target", 3)
        name = f"busy machine: beside {b['competitors']} CPU-bound processes / idle"
        ratio_rows.append([name, f"**{_ratio(value)}**" if value <= target else _ratio(value), f"≤ {target}x"])
    if ratio_rows:
        out += [*_table(["ratio (baseline in the same run)", "value", "target"], ratio_rows, "lrr"), ""]
    return [*out, _run_line(doc)] if doc is not None else out[:-1]


def render_evaluator(doc: dict) -> list[str]:
    m = doc["measurements"]
    rows = [
        [
            str(i + 1),
            f"{r['memory_s']:.2f}",
            f"{r['library_s']:.2f} ({_ratio(r['library_s'] / r['memory_s'])})",
            f"{r['cli_s']:.2f} ({_ratio(r['cli_s'] / r['memory_s'])})",
            f"{r['write_s']:.2f}",
        ]
        for i, r in enumerate(m["rounds"])
    ]
    rows.append(
        [
            "min",
            f"{m['memory_s']:.2f}",
            f"{m['library_s']:.2f} ({_ratio(m['library_s'] / m['memory_s'])})",
            f"**{m['cli_s']:.2f} ({_ratio(m['cli_s'] / m['memory_s'])})**",
            f"{m['write_s']:.2f}",
        ]
    )
    return [
        "### In memory versus the store (`benchmarks/bench_evaluator.py`)",
        "",
        f"`evaluate_features` on arrays next to `sweep(STORE)` and `nnk sweep STORE` on the same data "
        f"({m['n_train']:,} x {m['dim']} train rows, {m['n_query']:,} queries, `--k {m['k']}`; identical "
        "accuracies, checked). Seconds; in brackets the time over the in-memory run of the same round "
        "(above 1: the in-memory path is faster; target: in memory no slower than `nnk sweep`).",
        "",
        *_table(["round", "evaluate_features s", "sweep(store) s", "nnk sweep s", "write the store s"], rows, "lrrrr"),
        "",
        _run_line(doc),
    ]


def render_scale(doc: dict) -> list[str]:
    """ImageNet-size runs, flat index against ``--shards 4``: time, CPU time, memory; the ratios."""
    m = doc["measurements"]
    runs = m["runs"]

    def cell(r, key, fmt="{:.1f}"):
        return fmt.format(r[key]) if r.get(key) is not None else "–"

    rows = [
        [
            f"`{name}`",
            cell(r, "wall_s", "{:.2f}"),
            cell(r, "cpu_s", "{:.2f}"),
            cell(r, "peak_rss_mib", "{:.0f}"),
            cell(r, "peak_anon_mib", "{:.0f}"),
            cell(r, "to_50k_s"),
        ]
        for name, r in runs.items()
    ]
    ratio_rows = []
    pairs = [(name, r, runs.get(name.replace("(shards 4", "(flat"))) for name, r in runs.items() if "(shards 4" in name]
    # runs recorded while a sharded index was searched in float32 whatever the kernel: its fp32 run stands beside
    # the flat index's other kernels
    for name, flat in runs.items():
        command, _, kernel = name.partition(" (flat, ")
        kernel = kernel.rstrip(")")
        sharded = runs.get(f"{command} (shards 4, fp32)")
        if kernel and kernel != "fp32" and f"{command} (shards 4, {kernel})" not in runs and sharded is not None:
            pairs.append((f"{command} (shards 4, flat {kernel}, shards fp32)", sharded, flat))
    for name, r, flat in pairs:
        if not flat or name.startswith("index"):
            continue
        wall = r["wall_s"] / flat["wall_s"]
        cpu = f"{r['cpu_s'] / flat['cpu_s']:.2f}x" if r.get("cpu_s") and flat.get("cpu_s") else "–"
        anon = f"{r['peak_anon_mib'] / flat['peak_anon_mib']:.0%}" if flat.get("peak_anon_mib") else "–"
        ratio_rows.append(
            [
                f"`{name.replace(' (shards 4', ' (')}`".replace(" ()", "").replace("(, ", "("),
                f"**{_ratio(wall)}**" if wall <= 1.3 else _ratio(wall),
                cpu,
                anon,
                f"{r['peak_rss_mib'] / flat['peak_rss_mib']:.0%}",
            ]
        )
    out = [
        "### ImageNet size, flat against `--shards 4` (`benchmarks/bench_scale.py`)",
        "",
        f"The real CLI in subprocesses on a synthetic store of {m['n_train']:,} x {m['dim']} float16 train rows and "
        f"{m['n_query']:,} queries, {m['classes']} classes; the least disturbed of {m.get('repeats', 1)} interleaved "
        "round(s) (minimum wall and CPU seconds). Peak RSS counts the mapped pages of a sharded index's files; "
        "anonymous memory (sampled every 0.1 s) is what the process itself holds. The last column extrapolates the "
        "query loop to 50,000 queries.",
        "",
        *_table(["run", "wall s", "CPU s", "peak RSS MiB", "anon MiB", "s at 50k queries"], rows, "lrrrrr"),
        "",
    ]
    if ratio_rows:
        header = ["shards 4 / flat", "wall (≤ 1.3x)", "CPU", "peak anonymous memory", "peak RSS"]
        out += [*_table(header, ratio_rows, "lrrrr"), ""]
    return [*out, _run_line(doc)]


def render_probe(doc: dict) -> list[str]:
    m = doc["measurements"]
    curve = m["curve"]
    iters = sum(c["iterations"] for c in curve)
    held = sum(c.get("stopped_on_held_out", False) for c in curve)
    evals = m.get("probe_evaluations")
    if "refit_iterations" in m:
        iters = f"{iters} + {m['refit_iterations']}"
    cpu = m.get("probe_cpu_s")
    rows = [
        [
            f"nnk probe: {len(curve)} of 45 C values ({held} stopped on the held-out top-1) + refit",
            f"{m['probe_select_refit_s']:.1f}",
            f"{cpu:.1f}" if cpu is not None else "–",
            f"{iters} ({evals} evaluations)" if evals is not None else str(iters),
            f"{m['probe_top1']:.2f}",
        ],
        [
            f"scikit-learn `LogisticRegression(lbfgs)`, one fit at C = {m['chosen_c']:.4g}",
            f"{m['sklearn_fit_s']:.1f}",
            f"{m['sklearn_cpu_s']:.1f}" if "sklearn_cpu_s" in m else "–",
            str(m["sklearn_iterations"]),
            f"{m['sklearn_top1']:.2f}",
        ],
    ]
    ok = m["ratio"] < 1 and abs(m["probe_top1"] - m["sklearn_top1"]) <= 0.1
    ratio = f"**{_ratio(m['ratio'])}**" if ok else _ratio(m["ratio"])
    ratio_rows = [["selection + refit / one scikit-learn fit, wall", ratio, "< 1x, top-1 within 0.1 point"]]
    rounds = [f"{r['probe_select_refit_s']:.0f} s against {r['sklearn_fit_s']:.0f} s" for r in m.get("rounds", [])]
    if "cpu_ratio" in m:
        ratio_rows.append(["whole probe command / one scikit-learn fit, CPU seconds", _ratio(m["cpu_ratio"]), ""])
    return [
        "### The linear probe (`benchmarks/bench_probe.py`)",
        "",
        f"`nnk probe`'s whole choice of C plus the refit, against one scikit-learn fit at the C it chose, from zero, "
        f"in the same process, on the seeded synthetic mixture of `bench_pipeline.py` ({m['rows']:,} x {m['dim']} "
        f"train rows, {m['classes']} classes, {m['queries']:,} queries), {m['threads']} BLAS threads each, the "
        f"fastest of {m.get('repeats', 1)} interleaved round(s) of each (every round: "
        + ", ".join(rounds)
        + "). The CPU seconds count every thread and move least with other processes' load.",
        "",
        *_table(["run", "wall s", "CPU s", "L-BFGS iterations", "query top-1 %"], rows, "lrrrr"),
        "",
        *_table(["ratio (baseline in the same run)", "value", "target"], ratio_rows, "lrr"),
        "",
        _run_line(doc),
    ]


def render_search_kernel(doc: dict) -> list[str]:
    """``bench_search_kernel.py``: classify --k 50 --method knn per kernel, per store, and the same run's GEMM rates."""
    m = doc["measurements"]
    out = [
        "### The certified bfloat16 search (`benchmarks/bench_search_kernel.py`)",
        "",
        f"`classify --k {m['k']} --method knn --threads {m['threads']}` per `--search-kernel`, the real CLI in "
        f"subprocesses, the minimum of {m['repeats']} interleaved rounds; the GEMM rates were measured in the "
        "same run, a 2,048 x 32,768 x d product taken in the search's blocks of rows.",
    ]
    for name in ("synthetic", "fashion-mnist"):
        r = m.get(name)
        if r is None:
            continue
        rows = [
            [
                f"`{kernel}`",
                f"{run['wall_s']:.2f}",
                f"{run['search_s']:.2f}",
                str(run.get("search_kernel")),
                str(run.get("search_fallbacks")),
                f"{run['peak_rss_mib']:.0f}",
            ]
            for kernel, run in r["runs"].items()
        ]
        bf16 = r["ratio_bf16_over_fp32"]
        g1, gt = r["gemm_gflops_1_thread"], r["gemm_gflops_threads"]

        def rates(g: dict) -> str:
            mkl, torch = g.get("bf16_mkl"), g.get("bf16_torch", g.get("bf16"))
            return f"float32 {_rate(g.get('fp32'))}, bfloat16 oneMKL {_rate(mkl)}, torch {_rate(torch)}"

        store = "Fashion-MNIST raw pixels (60,000 x 784)" if name == "fashion-mnist" else "synthetic (200,000 x 384)"
        out += [
            "",
            f"#### {store}, 10,000 queries",
            "",
            *_table(["--search-kernel", "wall s", "search s", "ran", "fallbacks", "peak RSS MiB"], rows, "lrrlrr"),
            "",
            *_table(
                ["ratio (baseline: fp32, same run)", "value", "target"],
                [
                    ["bf16 / fp32, wall", f"**{_ratio(bf16)}**" if bf16 <= 0.6 else _ratio(bf16), "≤ 0.6x"],
                    ["auto / fp32, wall", _ratio(r["ratio_auto_over_fp32"]), "–"],
                    ["bf16 / fp32, search thread-seconds", _ratio(r["search_ratio_bf16"]), "–"],
                ],
                "lrr",
            ),
            "",
            f"Identical `--out` files (neighbors, scores, predictions): {'yes' if r['identical_outputs'] else 'NO'}. "
            f"bfloat16 library: {r.get('bf16_library') or 'torch'}. GEMM GFLOP/s, one thread: {rates(g1)}; "
            f"{m['threads']} threads: {rates(gt)}.",
        ]
    return [*out, "", _run_line(doc)]


def render_other(doc: dict) -> list[str]:
    """A benchmark without its own table: its measurements as JSON."""
    return [
        f"### `benchmarks/{doc['benchmark']}.py`",
        "",
        "```json",
        json.dumps(doc["measurements"], indent=1, sort_keys=True),
        "```",
        "",
        _run_line(doc),
    ]


RENDERERS = {
    "bench_pipeline": render_pipeline,
    "bench_solver": render_solver,
    "bench_evaluator": render_evaluator,
    "bench_scale": render_scale,
    "bench_probe": render_probe,
    "bench_search_kernel": render_search_kernel,
}
ORDER = ("bench_pipeline", "bench_search_kernel", "bench_scale", "bench_solver", "bench_evaluator", "bench_probe")

HEADER = """\
# Performance

<!-- GENERATED by docs/gen_performance.py from benchmarks/results/*/*.json: do not edit by hand.
     Rerun a benchmark with --json, file it with `python docs/gen_performance.py --record RUN.json`. -->

Every number on this page comes from a script in `benchmarks/` that measures its **baseline in the
same run**, and was written by that script's `--json PATH` option together with the machine that
produced it. The page shows the **latest run per kind of machine** (CPU model and family, the
AVX-512/AMX flags, the cores available), one section each; older measurements are kept in the
[changelog](changelog.md). Ratios against the baseline travel between machines far better than
seconds do: compare ratios, and compare seconds only within one table. Each run also records the
load average when it ended: on a shared machine, other jobs' load moves every number (the runs on
this page were kept under ten minutes in all for that reason).

Rerun them on your machine (each script prints its tables as well as writing the JSON):

<!-- skip: benchmarks take minutes, need the repository's benchmarks/ folder and the Fashion-MNIST IDX files -->
```bash
python benchmarks/bench_solver.py --quick --json run-solver.json        # ~20 s idle; full size ~2 min
python benchmarks/bench_pipeline.py --quick --json run-pipeline.json    # ~1 min; full size and --busy: longer
python benchmarks/bench_evaluator.py --quick --json run-evaluator.json  # ~1 min
python docs/gen_performance.py --record run-*.json                      # file them, rewrite this page
```

The `--quick` sizes are smoke runs: there the fixed costs (interpreter start, imports, index
load) weigh far more than at the full sizes the targets were set for, so a quick run's end-to-end
ratios miss their targets without meaning a regression. Other scripts — `bench_scale.py`
(ImageNet scale, tens of minutes), `bench_select.py`, `bench_compare.py`, `bench_import.py`,
`bench_index_checksum.py`, `bench_torch_backend.py` — print their own comparisons; their
results appear here once a `--json` run of them is recorded.
"""


def render(results: dict[str, dict[str, dict]]) -> str:
    lines = [HEADER.rstrip("\n"), ""]
    if not results:
        lines += ["No results recorded yet.", ""]
    for kind, docs in results.items():
        first = next(iter(docs.values()))
        m = first["machine"]
        lines += [f"## {m.get('cpu_model')}, {m.get('cores_available')} cores (`{kind}`)", "", *machine_section(m)]
        names = [n for n in ORDER if n in docs] + sorted(n for n in docs if n not in ORDER)
        for name in names:
            lines += ["", *RENDERERS.get(name, render_other)(docs[name])]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/performance.md is not what this writes")
    ap.add_argument("--record", type=Path, nargs="+", default=[], help="benchmark JSON files to file first")
    a = ap.parse_args(argv)
    for dest in record(a.record):
        sys.stderr.write(f"recorded {dest.relative_to(ROOT)}\n")
    text = render(load_results())
    if a.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            sys.stderr.write(f"{PAGE.relative_to(ROOT)} is stale: run python docs/gen_performance.py\n")
            return 1
        return 0
    PAGE.write_text(text)
    sys.stderr.write(f"wrote {PAGE.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
