"""The README documents every command and option that `--help` shows (so they cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnkcli.cli import COMMANDS, cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_documented(runner, command):
    res = runner.invoke(cli, [command, "--help"])
    assert res.exit_code == 0
    assert f"nnk {command}" in README
    options = set(re.findall(r"(--[a-z0-9][a-z0-9-]+)", res.stdout))
    missing = sorted(o for o in options if o not in README)
    assert not missing, f"nnk {command}: {missing} are not in the README"


def test_exit_codes_are_documented():
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |"):
        assert code in README
