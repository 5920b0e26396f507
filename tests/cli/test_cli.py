"""The command-line plumbing: version, help, error mapping, exit codes, verbosity."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from nnkcli import __version__
from nnkcli.cli import COMMANDS, cli, command_options, get_ui
from nnkcli.errors import ExitCode, InputError


def test_version(runner):
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"nnk {__version__}\n"


def test_help_lists_every_command_with_examples(runner):
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.stdout
    for name in COMMANDS:
        sub = runner.invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Examples:" in sub.stdout or "Example" in sub.stdout, name


def test_unknown_command_is_usage_error(runner):
    res = runner.invoke(cli, ["frobnicate"])
    assert res.exit_code == ExitCode.USAGE == 2


@pytest.fixture
def probe():
    """A throwaway command, registered on the group for one test, that raises what it is told."""

    @click.command("fake-command")
    @click.argument("what")
    @command_options
    def probe_cmd(what, fmt):
        get_ui()
        if what == "input":
            raise InputError("the thing is wrong", hint="do the other thing")
        if what == "bug":
            raise ZeroDivisionError("division by zero")
        if what == "interrupt":
            raise KeyboardInterrupt
        click.echo(f"ok {fmt}")

    # a name of its own: the fixture once registered "probe" and, deleting it after, took `nnk probe`
    # away from every later test in the process
    assert "fake-command" not in COMMANDS
    COMMANDS["fake-command"] = "tests_probe:probe"
    sys.modules["tests_probe"] = type(sys)("tests_probe")
    sys.modules["tests_probe"].probe = probe_cmd
    yield
    del COMMANDS["fake-command"]
    del sys.modules["tests_probe"]


def test_nnk_error_is_one_line_plus_hint(runner, probe):
    res = runner.invoke(cli, ["fake-command", "input"])
    assert res.exit_code == 1
    assert res.stderr == "Error: the thing is wrong\nHint: do the other thing\n"
    assert res.stdout == ""


def test_traceback_only_with_verbose(runner, probe):
    res = runner.invoke(cli, ["fake-command", "input", "-v"])
    assert res.exit_code == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.rstrip().endswith("Error: the thing is wrong\nHint: do the other thing")
    res = runner.invoke(cli, ["-v", "fake-command", "bug"])
    assert "ZeroDivisionError" in res.stderr and "Traceback" in res.stderr


def test_unexpected_exception_is_short_without_verbose(runner, probe):
    res = runner.invoke(cli, ["fake-command", "bug"])
    assert res.exit_code == 1
    assert res.stderr == (
        "Error: unexpected ZeroDivisionError: division by zero\n"
        "Hint: rerun with -v for the traceback, and please report it\n"
    )


def test_interrupt_is_130(runner, probe):
    res = runner.invoke(cli, ["fake-command", "interrupt"])
    assert res.exit_code == ExitCode.INTERRUPTED == 130
    assert res.stderr == "Interrupted.\n"


def test_format_choice_reaches_the_command(runner, probe):
    assert runner.invoke(cli, ["fake-command", "x", "--format", "csv"]).stdout == "ok csv\n"
    assert runner.invoke(cli, ["fake-command", "x", "--format", "yaml"]).exit_code == 2


def test_python_dash_m_and_real_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnkcli", "info", str(tmp_path / "missing.h5")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "nnkcli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"nnk {__version__}"
