"""The README's shell examples are real: each parses with its command's own options and values,
and the ones on the committed sample store print what the README shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from nnk_cli import invoke
from nnkcli.cli import COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
# values an example takes from its environment (variables, xargs' {})
EXAMPLE_ENV = {"$SLURM_ARRAY_TASK_ID": "0", "$SLURM_ARRAY_TASK_COUNT": "4", "{}": "0"}
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1"}


def readme_examples() -> list[tuple[int, list[str], list[str]]]:
    """Every ``nnk`` command line in the README's code blocks: (line number, argv after ``nnk``,
    the lines the README shows it printing: those after a ``$ nnk`` line up to the next prompt)."""
    examples = []
    lines = README.splitlines()
    in_block, lang, i = False, "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_block, lang = not in_block, line[3:].strip()
            i += 1
            continue
        if not in_block:
            i += 1
            continue
        start, text = i + 1, line
        while text.endswith("\\") and i + 1 < len(lines):  # continuation lines
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        i += 1
        prompt = text.startswith("$ ")
        if lang in ("", "console") and not prompt and "&& nnk " not in text:
            continue  # printed output, not a command (a cron line runs one after &&)
        for argv in _nnk_invocations(text[2:] if prompt else text):
            shown = []
            while prompt and i < len(lines) and not lines[i].startswith(("$ ", "```")):
                shown.append(lines[i])
                i += 1
            examples.append((start, argv, shown))
    return examples


def _nnk_invocations(text: str) -> list[list[str]]:
    """The argv of each ``nnk`` command in one shell line (pipes, redirections and comments cut)."""
    for name, value in EXAMPLE_ENV.items():
        text = text.replace(name, value)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    found, current = [], None
    for tok in tokens:
        if tok in SHELL_OPERATORS or set(tok) <= set("|&;<>"):
            if current is not None:
                found.append(current)
            current = None
        elif current is not None:
            current.append(tok)
        elif tok == "nnk":
            current = []
    if current is not None:
        found.append(current)
    return [argv for argv in found if argv and re.fullmatch(r"[a-z][a-z-]*", argv[0])]


EXAMPLES = readme_examples()


def test_the_readme_has_examples_of_every_command():
    assert len(EXAMPLES) > 40
    assert {argv[0] for _, argv, _ in EXAMPLES} >= set(COMMANDS)


@pytest.mark.parametrize(
    "line, argv", [(line, argv) for line, argv, _ in EXAMPLES], ids=[f"line{line}" for line, _, _ in EXAMPLES]
)
def test_example_parses_with_its_commands_options(line, argv):
    """Unknown options, a missing value, a stray argument or a value that the option's type or check
    refuses (a choice, a number, a k list) fail; paths are not opened."""
    name, args = argv[0], argv[1:]
    assert name in COMMANDS, f"README line {line}: nnk {name} is not a command"
    command = cli.get_command(click.Context(cli, info_name="nnk"), name)
    ctx = click.Context(command, info_name=name, parent=click.Context(cli, info_name="nnk"))
    try:
        values, rest, _ = command.make_parser(ctx).parse_args(args=list(args))
        assert not rest, f"unexpected arguments {rest}"
        for param in command.get_params(ctx):  # each value through its type and its check, as a run would
            if isinstance(param.type, (click.Path, click.File)):
                ctx.params[param.name] = values.get(param.name)
            else:
                param.handle_parse_result(ctx, values, [])
    except click.UsageError as e:
        pytest.fail(f"README line {line}: nnk {shlex.join(argv)}: {e.format_message()}")


def _runnable(argv):
    """Examples that need nothing but the committed sample store."""
    paths = [a for a in argv[1:] if not a.startswith("-") and ("/" in a or a.endswith(".h5"))]
    return paths and all(a.startswith("sample_data/") for a in paths)


SAMPLE_EXAMPLES = [(line, argv, shown) for line, argv, shown in EXAMPLES if _runnable(argv)]


@pytest.mark.parametrize("line, argv, shown", SAMPLE_EXAMPLES, ids=[f"line{e[0]}" for e in SAMPLE_EXAMPLES])
def test_sample_store_example_prints_what_the_readme_shows(runner, monkeypatch, line, argv, shown):
    """Each shown line is printed word for word (or shortened: a run of the words of a printed line)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping of the wide tables
    res = invoke(runner, *argv)
    assert res.exit_code == 0, f"README line {line}: {res.stderr}"
    printed = [out.split() for out in (res.stdout + "\n" + res.stderr).splitlines()]
    for want in (shown_line.split() for shown_line in shown):
        found = any(got[i : i + len(want)] == want for got in printed for i in range(len(got) - len(want) + 1))
        assert found, f"README line {line} shows {' '.join(want)!r}; nnk {shlex.join(argv)} printed:\n" + "\n".join(
            map(" ".join, printed)
        )


def test_sample_store_examples_are_found():
    assert {argv[0] for _, argv, _ in SAMPLE_EXAMPLES} >= {"info", "classify", "compare"}
    assert any(shown for _, _, shown in SAMPLE_EXAMPLES)


def test_exit_codes_are_documented():
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |"):
        assert code in README
