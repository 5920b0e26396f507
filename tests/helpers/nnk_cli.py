"""Running the command line in-process for the CLI tests."""

from __future__ import annotations


def invoke(runner, *args, **kwargs):
    """``nnk ARGS...`` through click's ``runner`` (each argument ``str()``-ed); exceptions propagate."""
    from nnkcli.cli import cli

    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)
