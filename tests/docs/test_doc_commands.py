"""Every ``nnk`` command line of the README and the docs parses with its command's own options and values,
even the ones that are not run (a GPU, a cluster, a download), and the exit codes are documented."""

from __future__ import annotations

import shlex

import click
import pytest

from nnk_docs import REPO, doc_pages, page_commands
from nnkcli.cli import COMMANDS, cli
from nnkcli.errors import ExitCode

EXAMPLES = [(page, line, argv) for page in doc_pages() for line, argv in page_commands(page)]


def _id(page, line):
    return f"{page.relative_to(REPO)}:{line}"


def test_the_docs_have_examples_of_every_command():
    assert {argv[0] for _, _, argv in EXAMPLES} >= set(COMMANDS)


@pytest.mark.parametrize("page, line, argv", EXAMPLES, ids=[_id(p, n) for p, n, _ in EXAMPLES])
def test_example_parses_with_its_commands_options(page, line, argv):
    """Unknown options, a missing value, a stray argument or a value that the option's type or check
    refuses (a choice, a number, a k list) fail; paths are not opened."""
    where = _id(page, line)
    name, args = argv[0], argv[1:]
    assert name in COMMANDS, f"{where}: nnk {name} is not a command"
    if {"-h", "--help"} & set(args):
        return
    root = click.Context(cli, info_name="nnk")
    command = cli.get_command(root, name)
    ctx = click.Context(command, info_name=name, parent=root)
    try:
        values, rest, _ = command.make_parser(ctx).parse_args(args=list(args))
        assert not rest, f"unexpected arguments {rest}"
        for param in command.get_params(ctx):  # each value through its type and its check, as a run would
            if isinstance(param.type, (click.Path, click.File)):
                ctx.params[param.name] = values.get(param.name)
            else:
                param.handle_parse_result(ctx, values, [])
    except click.UsageError as e:
        pytest.fail(f"{where}: nnk {shlex.join(argv)}: {e.format_message()}")


def test_exit_codes_are_documented():
    readme = (REPO / "README.md").read_text()
    for code in (0, 1, 2, 3, 130):
        assert f"| {code} |" in readme, f"the README's exit codes lack {code}"
    page = (REPO / "docs" / "reference" / "exit-codes.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in page, f"docs/reference/exit-codes.md lacks {code!r}"
