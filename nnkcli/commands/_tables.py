"""Tables for documents: Markdown (a README) and a LaTeX ``tabular`` (a paper's ``\\input``).

The cells are those of the terminal table (``output.Column``: a value in its format, and
``± half-width`` of its interval); the text of a cell is escaped for the target, so a store
named ``runs/ckpt_10%.h5`` prints as such in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nnkcli.output import Column

#: LaTeX's special characters and what stands for each in text
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with every LaTeX special character written so that it prints as itself."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def markdown_escape(text: str) -> str:
    """``text`` safe inside a Markdown table cell (pipes, backslashes and emphasis characters escaped)."""
    out = str(text).replace("\\", "\\\\")
    for ch in "|*_`[]<>":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


def _parts(column: Column, row: dict) -> tuple[str, str | None]:
    """A cell as (value, half-width or None); '-' for a missing value."""
    value = row.get(column.key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-", None
    text = format(value, column.spec) if column.spec and isinstance(value, (int, float)) else str(value)
    interval = row.get(column.ci) if column.ci else None
    if (
        isinstance(interval, (list, tuple))
        and len(interval) == 2
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in interval)
    ):
        return text, format((interval[1] - interval[0]) / 2.0, column.spec)
    return text, None


def markdown_table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned, text left."""
    head = "| " + " | ".join(markdown_escape(c.title) for c in columns) + " |"
    rule = "|" + "|".join(":---" if c.justify == "left" else "---:" for c in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for c in columns:
            text, half = _parts(c, row)
            cells.append(markdown_escape(text) + (f" ± {half}" if half is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """A ``tabular`` (booktabs rules: ``\\usepackage{booktabs}``) with ``value $\\pm$ half`` cells."""
    spec = "".join("l" if c.justify == "left" else "r" for c in columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(c.title) for c in columns) + r" \\")
    lines.append("\\midrule")
    for row in rows:
        cells = []
        for c in columns:
            text, half = _parts(c, row)
            cells.append(latex_escape(text) + (f" $\\pm$ {half}" if half is not None else ""))
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
