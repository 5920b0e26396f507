"""The runnable examples of the README and the docs: find them, run them, count them.

The convention (every page and the README):

- a fenced ``bash`` block runs as a shell script (``bash -e``), a ``python`` block with the current interpreter (each a
  fresh process), in the page's order, all in one fresh temporary folder per page that holds a copy of
  ``sample_data/``, with ``nnk`` (and ``python``) of this interpreter and this checkout on PATH;
- ``<!-- skip: REASON -->`` on the line before a block (blank lines between are allowed) skips it, reporting REASON;
- ``<!-- exit: N -->`` before a block expects exit code N instead of 0;
- a ``text`` block right after a runnable block (only blank lines, or one line of prose ending with ``:``, between) is
  the output it shows: each of its lines must appear in what the block printed, word for word, in one printed line
  (a ``...`` word stands for any words; a line of only ``...`` is not checked); ``<!-- output: unchecked -->`` before
  the ``text`` block says it is not that output.

``python tests/helpers/nnk_docs.py`` prints how many blocks each page has, run and skipped, and the reasons; with
``--run`` it runs them too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "sample_data"
RUNNABLE = ("bash", "python")
BLOCK_TIMEOUT_S = 300
_DIRECTIVE = re.compile(r"<!--\s*(skip|exit|output)\s*:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  #: line of the opening fence (1-based)
    lang: str
    code: str
    skip: str | None = None  #: the reason, when marked ``<!-- skip: ... -->``
    exit_code: int = 0
    output: list[str] | None = None  #: the ``text`` block shown as its output, if any
    output_line: int = 0
    unchecked: bool = False  #: a ``text`` block marked ``<!-- output: unchecked -->``

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE


def doc_pages() -> list[Path]:
    """The README and every Markdown page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def parse_blocks(page: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of ``page`` with their directives, and each runnable block's shown output."""
    lines = (page.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    directives: dict[str, str] = {}
    between: list[str] = []  # non-blank lines since the last block closed
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if not fence:
            found = _DIRECTIVE.search(line)
            if found:
                directives[found.group(1)] = found.group(2)
            elif line.strip():
                between.append(line)
                directives = {}  # a directive applies to the block right after it
            i += 1
            continue
        indent, marker, lang = fence.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        block = Block(page, start, lang.lower(), "\n".join(body) + "\n", skip=directives.get("skip"))
        if "exit" in directives:
            try:
                block.exit_code = int(directives["exit"])
            except ValueError:
                wrong = directives["exit"]
                raise ValueError(f"{block.where}: <!-- exit: N --> needs a number, got {wrong!r}") from None
        block.unchecked = directives.get("output", "").startswith("unchecked")
        previous = blocks[-1] if blocks else None
        shown_after = len(between) == 0 or (len(between) == 1 and between[0].rstrip().endswith(":"))
        if block.lang == "text" and previous is not None and previous.runnable and shown_after and not block.unchecked:
            if previous.output is None:
                previous.output, previous.output_line = body, start
        blocks.append(block)
        directives, between = {}, []
    return blocks


# -- the nnk command lines of a page ---------------------------------------------------------------------------------
# values an example takes from its environment (a job array's index, xargs' {})
EXAMPLE_ENV = {
    "$SLURM_ARRAY_TASK_ID": "0",
    "$SLURM_ARRAY_TASK_COUNT": "4",
    "${SLURM_ARRAY_TASK_ID}": "0",
    "{}": "0",
    "$i": "0",  # a shell loop's index (for i in 0 1; do ... --shard $i/2 ...)
}
_SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1", "(", ")"}
_GROUP_OPTION = re.compile(r"-(q+|v+)|--quiet|--verbose")


def nnk_invocations(text: str) -> list[list[str]]:
    """The argv (after ``nnk``) of each ``nnk COMMAND`` in one shell line: pipes, redirections, comments cut."""
    for name, value in EXAMPLE_ENV.items():
        text = text.replace(name, value)
    text = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "X", text)  # a command substitution stands for one word
    text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "X", text)  # so does a variable
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unclosed quote: the line is not a command
        raise ValueError(f"cannot split {text!r} into words: {exc}") from None
    found: list[list[str]] = []
    current: list[str] | None = None
    for tok in tokens:
        if tok in _SHELL_OPERATORS or set(tok) <= set("|&;<>()"):
            if current is not None:
                found.append(current)
            current = None
        elif current is not None:
            current.append(tok)
        elif tok == "nnk":
            current = []
    if current is not None:
        found.append(current)
    commands = []
    for argv in found:
        while argv and _GROUP_OPTION.fullmatch(argv[0]):  # nnk -v classify ...
            argv = argv[1:]
        if argv and re.fullmatch(r"[a-z][a-z-]*", argv[0]):
            commands.append(argv)
    return commands


def shell_lines(code: str) -> list[tuple[int, str]]:
    """(offset, line) of each logical line of a shell script: continuations joined, comments and heredocs left out."""
    out, lines, i = [], code.splitlines(), 0
    heredoc = None
    while i < len(lines):
        start, text = i, lines[i]
        if heredoc is not None:
            if text.strip() == heredoc:
                heredoc = None
            i += 1
            continue
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        i += 1
        here = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", text)
        if here:
            heredoc = here.group(1)
        if text.strip() and not text.lstrip().startswith("#"):
            out.append((start, text))
    return out


def page_commands(page: Path, text: str | None = None) -> list[tuple[int, list[str]]]:
    """(line, argv) of every ``nnk`` command of a page: in its bash blocks (run or not), the cron lines of its
    text blocks (``... && nnk ...``) and the prompts (``$ nnk ...``) of a console session."""
    commands = []
    for block in parse_blocks(page, text):
        if block.exit_code == 2:  # a usage error shown on purpose: running the block checks its exit code
            continue
        if block.lang in ("bash", "sh", "shell"):
            lines = shell_lines(block.code)
        elif block.lang == "text":
            lines = [(n, line) for n, line in enumerate(block.code.splitlines()) if "&& nnk " in line]
        elif block.lang in ("console", ""):  # a shell session: the lines after a "$ " prompt
            lines = [(n, line[2:]) for n, line in shell_lines(block.code) if line.startswith("$ ")]
        else:
            continue
        for offset, line in lines:
            for argv in nnk_invocations(line):
                commands.append((block.line + 1 + offset, argv))
    return commands


# -- running a page --------------------------------------------------------------------------------------------------
@dataclass
class PageRun:
    """What running one page's blocks gave."""

    page: Path
    ran: list[Block] = field(default_factory=list)
    skipped: list[Block] = field(default_factory=list)
    failure: str | None = None  #: the first failing block, what it printed


def _tool_dir(where: Path) -> Path:
    """``nnk`` and ``python`` of this interpreter, running this checkout's package."""
    bin_dir = where / ".bin"
    bin_dir.mkdir()
    for name, args in (("nnk", "-m nnkcli"), ("python", ""), ("python3", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        script.chmod(0o755)
    return bin_dir


def example_env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "200"  # no wrapping of the wide tables
    env["MPLBACKEND"] = "Agg"
    env.pop("NNK_THREADS", None)
    return env


def shown_output_mismatch(shown: list[str], printed: str) -> str | None:
    """The first shown line that the printed text does not contain (words in order, ``...`` = any words), or None."""
    printed_lines = [line.split() for line in printed.splitlines()]
    for want_line in shown:
        want = want_line.split()
        if not want or all(w in ("...", "…") for w in want):
            continue
        segments, seg = [], []
        for word in want:
            if word in ("...", "…"):
                segments.append(seg)
                seg = []
            else:
                seg.append(word)
        segments.append(seg)
        segments = [s for s in segments if s]
        if not any(_contains_in_order(got, segments) for got in printed_lines):
            return want_line
    return None


def _contains_in_order(got: list[str], segments: list[list[str]]) -> bool:
    at = 0
    for seg in segments:
        for i in range(at, len(got) - len(seg) + 1):
            if got[i : i + len(seg)] == seg:
                at = i + len(seg)
                break
        else:
            return False
    return True


def run_page(page: Path, text: str | None = None, workdir: Path | None = None) -> PageRun:
    """Run a page's runnable blocks in order in a fresh folder holding a copy of sample_data/; stop at a failure."""
    result = PageRun(page)
    blocks = [b for b in parse_blocks(page, text) if b.runnable]
    with tempfile.TemporaryDirectory(prefix="nnk-docs-") as tmp:
        where = Path(workdir or tmp)
        shutil.copytree(SAMPLE_DATA, where / "sample_data", ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
        env = example_env(_tool_dir(where))
        for n, block in enumerate(blocks):
            if block.skip is not None:
                result.skipped.append(block)
                continue
            script = where / f".block{n}.{'sh' if block.lang == 'bash' else 'py'}"
            script.write_text(block.code)
            argv = ["bash", "-e", str(script)] if block.lang == "bash" else [sys.executable, str(script)]
            try:
                proc = subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                result.failure = f"{block.where}: the {block.lang} block ran over {BLOCK_TIMEOUT_S} s"
                return result
            result.ran.append(block)
            printed = proc.stdout + "\n" + proc.stderr
            if proc.returncode != block.exit_code:
                result.failure = (
                    f"{block.where}: the {block.lang} block exited {proc.returncode}, expected {block.exit_code}"
                    f"{' (mark it <!-- exit: N --> if that is what it shows)' if block.exit_code == 0 else ''}\n"
                    f"--- block\n{block.code}--- stdout\n{proc.stdout[-3000:]}--- stderr\n{proc.stderr[-3000:]}"
                )
                return result
            if block.output is not None:
                missing = shown_output_mismatch(block.output, printed)
                if missing is not None:
                    result.failure = (
                        f"{block.where}: the output shown at line {block.output_line} has {missing.strip()!r}, "
                        f"which the block did not print (mark the text block <!-- output: unchecked --> if it is "
                        f"not this block's output)\n--- printed\n{printed[-3000:]}"
                    )
                    return result
    return result


# -- counting --------------------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """How many runnable blocks the pages have, run and skipped, and why they are skipped."""

    run: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    per_page: dict[str, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"docs examples: {self.run} blocks run, {self.skipped} skipped"]
        lines += [f"  {page}: {run} run, {skipped} skipped" for page, (run, skipped) in self.per_page.items()]
        lines += [f"  skipped x{n}: {reason}" for reason, n in self.reasons.most_common()]
        return "\n".join(lines)


def count_blocks(pages: list[Path] | None = None) -> Counts:
    """Count the runnable (bash, python) blocks of ``pages`` (default: the README and docs/), run and skipped."""
    counts = Counts()
    for page in pages if pages is not None else doc_pages():
        blocks = [b for b in parse_blocks(page) if b.runnable]
        skipped = [b for b in blocks if b.skip is not None]
        counts.run += len(blocks) - len(skipped)
        counts.skipped += len(skipped)
        counts.reasons.update(b.skip for b in skipped)
        counts.per_page[str(page.relative_to(REPO))] = (len(blocks) - len(skipped), len(skipped))
    return counts


if __name__ == "__main__":
    print(count_blocks().summary())  # noqa: T201 - this script's product
    if "--run" in sys.argv[1:]:
        failed = 0
        for page in doc_pages():
            run = run_page(page)
            if run.failure:
                failed += 1
                print(run.failure)  # noqa: T201
        sys.exit(1 if failed else 0)
