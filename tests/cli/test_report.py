"""``nnk report``: the Markdown and LaTeX tables (snapshots, escaping), the command's formats and exit codes."""

from __future__ import annotations

import json

import pytest

from nnk_cli import invoke
from nnkcli.commands._tables import latex_escape, latex_table, markdown_table
from nnkcli.commands.report import table

DOC = {
    "k_values": [10, 20],
    "rows": [
        {
            "store": "runs/ckpt_10%.h5",
            "linear": {"c": 1.0, "top1": 71.25, "top1_ci": [70.0, 72.5]},
            "knn": {
                "by_k": {"10": {"top1": 80.0, "top1_ci": [79.0, 81.0]}, "20": {"top1": 80.5, "top1_ci": [79.5, 81.5]}},
                "selected": {"k": 20, "top1": 80.5, "top1_ci": [79.5, 81.5]},
            },
            "nnk": {
                "by_k": {"10": {"top1": 82.0, "top1_ci": [81.0, 83.0]}, "20": {"top1": 82.25, "top1_ci": [81.0, 83.5]}},
                "selected": {"k": 10, "top1": 82.0, "top1_ci": [81.0, 83.0]},
            },
            "mcnemar": {
                "nnk_vs_knn": {"nnk_only": 30, "other_only": 12, "p_value": 0.0073},
                "nnk_vs_linear": None,
            },
        }
    ],
}

HEADERS = "store | linear | k-NN 10 | k-NN 20 | k-NN sel. | k-NN k | NNK 10 | NNK 20 | NNK sel. | NNK k | "
MARKDOWN = (
    f"| {HEADERS}p NNK/k-NN | p NNK/linear |\n"
    "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    "| runs/ckpt\\_10%.h5 | 71.25 ± 1.25 | 80.00 ± 1.00 | 80.50 ± 1.00 | 80.50 ± 1.00 | 20 | "
    "82.00 ± 1.00 | 82.25 ± 1.25 | 82.00 ± 1.00 | 10 | 0.0073 | - |\n"
)
LATEX = (
    "\\begin{tabular}{lrrrrrrrrrrr}\n\\toprule\n"
    + HEADERS.replace(" | ", " & ")
    + "p NNK/k-NN & p NNK/linear \\\\\n\\midrule\n"
    "runs/ckpt\\_10\\%.h5 & 71.25 $\\pm$ 1.25 & 80.00 $\\pm$ 1.00 & 80.50 $\\pm$ 1.00 & 80.50 $\\pm$ 1.00 & 20 & "
    "82.00 $\\pm$ 1.00 & 82.25 $\\pm$ 1.25 & 82.00 $\\pm$ 1.00 & 10 & 0.0073 & - \\\\\n"
    "\\bottomrule\n\\end{tabular}\n"
)


def test_markdown_and_latex_snapshots():
    columns, rows = table(DOC)
    assert markdown_table(columns, rows) == MARKDOWN
    assert latex_table(columns, rows) == LATEX


def test_latex_escapes_every_special_character():
    assert latex_escape(r"a&b%c$d#e_f{g}h~i^j\k") == (
        r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


@pytest.mark.slow
def test_the_command_prints_each_format(runner, store, tmp_path):
    args = ("report", store, "--k", "5,10", "--c-grid", "0.1,10", "--threads", 1, "--cache", tmp_path)
    res = invoke(runner, *args, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["cache"]["computed"] == 2 and len(doc["rows"]) == 1
    md = invoke(runner, *args, "--format", "markdown")
    assert md.exit_code == 0 and md.stdout.splitlines()[0].startswith("| store | linear |")
    assert len(md.stdout.splitlines()) == 3
    tex = invoke(runner, *args, "--format", "latex")
    assert tex.stdout.startswith("\\begin{tabular}") and "$\\pm$" in tex.stdout
    csv = invoke(runner, *args, "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("store,linear,linear_ci_low,linear_ci_high,knn@5,")
    assert "0 result(s) computed, 2 reused" in invoke(runner, *args).stdout


def test_a_missing_cache_folder_and_a_bad_format_are_refused(runner, store, tmp_path):
    from nnkcli.cli import cli

    res = runner.invoke(cli, ["report", str(store), "--cache", str(tmp_path / "nope"), "--no-probe"])
    assert res.exit_code == 1 and "cache folder not found" in res.stderr
    res = runner.invoke(cli, ["report", str(store), "--format", "html"])
    assert res.exit_code == 2 and "'--format'" in res.stderr
