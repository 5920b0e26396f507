"""Every help page is built the same way: usage, a one-line summary, the options, then the examples."""

from __future__ import annotations

import re

import pytest

from nnkcli.cli import COMMANDS, cli


@pytest.mark.parametrize("command", list(COMMANDS))
def test_summary_options_then_examples(runner, command):
    res = runner.invoke(cli, [command, "--help"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"Usage: cli {command} ") or lines[0].startswith(f"Usage: nnk {command} ")
    assert lines[1] == "" and lines[2].strip()  # the summary comes first
    options_at = lines.index("Options:")
    examples = [i for i, line in enumerate(lines) if line.strip() == "Examples:"]
    assert examples and examples[0] > options_at, f"nnk {command}: examples must follow the options"


@pytest.mark.parametrize("command", ["classify", "sweep", "evaluate"])
def test_k_is_a_spec_everywhere(runner, command):
    res = runner.invoke(cli, [command, "--help"])
    assert re.search(r"^\s+--k SPEC\b", res.stdout, re.M), res.stdout


@pytest.mark.parametrize("command", ["index", "classify", "sweep", "evaluate"])
def test_train_split_everywhere(runner, command):
    res = runner.invoke(cli, [command, "--help"])
    assert re.search(r"^\s+--train-split\b", res.stdout, re.M), res.stdout
