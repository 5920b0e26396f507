"""The CLI reference, generated from the click commands themselves, so it cannot drift.

An mkdocs hook (``hooks:`` in mkdocs.yml). For every command of ``nnkcli.cli.COMMANDS`` it adds a page
``reference/cli/<command>.md`` to the site and to the nav, after ``reference/cli/index.md``: the command's
description, its usage line, one table row per option (the help and the default that ``nnk <command> --help``
prints) and its examples (the ``Examples:`` block of its docstring) as a code block. In
``reference/cli/index.md`` it replaces ``<!-- nnk:commands -->`` with the list of commands and
``<!-- nnk:shared-options -->`` with the options of ``nnk`` itself and those several commands share.
A new command therefore gets its page and its nav entry without an edit here or in mkdocs.yml.

The page of ``nnk index`` is ``reference/cli/nnk-index.md``: ``index.md`` is the section's own page.
"""

from __future__ import annotations

import html
import re

import click

CLI_DIR = "reference/cli"
INDEX = f"{CLI_DIR}/index.md"
COMMANDS_MARKER = "<!-- nnk:commands -->"
SHARED_MARKER = "<!-- nnk:shared-options -->"


# -- reading the commands ---------------------------------------------------------------------------------------------
def command_names() -> list[str]:
    """The ``nnk`` commands, in the order of ``nnk --help``."""
    from nnkcli.cli import COMMANDS

    return list(COMMANDS)


def page_uri(name: str) -> str:
    """The page of ``nnk <name>``, relative to docs/ (``nnk index``'s would be the section's index page)."""
    return f"{CLI_DIR}/{'nnk-index' if name == 'index' else name}.md"


def command_context(name: str) -> click.Context:
    """The click context of ``nnk <name>``, as ``nnk <name> --help`` builds it (examples moved to the epilog)."""
    from nnkcli.cli import cli

    root = click.Context(cli, info_name="nnk", **cli.context_settings)
    command = cli.get_command(root, name)
    if command is None:
        raise KeyError(f"no command {name!r}")
    return click.Context(command, info_name=name, parent=root)


def option_rows(ctx: click.Context) -> list[tuple[str, str, str]]:
    """(names and metavar, help, default) of each option of ``ctx``'s command, as ``--help`` shows them."""
    rows = []
    for param in ctx.command.get_params(ctx):
        record = param.get_help_record(ctx)
        if not isinstance(param, click.Option) or record is None:
            continue
        names, text = record
        default, notes = "", []
        if text.endswith("]") and "  [" in text:  # click's "  [default: 256; x>=1]" / "  [required]"
            text, _, extra = text.rpartition("  [")
            for item in extra[:-1].split("; "):
                if item.startswith("default: "):
                    default = item.removeprefix("default: ")
                elif item == "required":
                    default = "required"
                else:
                    notes.append(item)
        if notes:
            text += f" ({', '.join(notes)})"
        rows.append((names, text, default))
    return rows


def paragraphs(text: str) -> list[tuple[bool, str]]:
    """click help text as (verbatim, text) paragraphs: a paragraph that starts with ``\\b`` keeps its lines."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        # a line holding only \b inside a block starts another verbatim paragraph (as in evaluate's examples)
        for i, para in enumerate(re.split(r"\n[ \t]*\x08[ \t]*\n", block)):
            verbatim = i > 0 or para.lstrip(" ").startswith("\b")
            para = para.lstrip(" ").removeprefix("\b").strip("\n")
            if para.strip():
                out.append((verbatim, para))
    return out


def split_epilog(epilog: str) -> tuple[list[str], list[tuple[bool, str]]]:
    """(the example command lines, the other paragraphs) of an epilog whose first block is ``Examples:``."""
    import textwrap

    examples, other, in_examples = [], [], False
    for verbatim, para in paragraphs(epilog):
        lines = para.splitlines()
        if verbatim and lines[0].strip() == "Examples:":
            in_examples, lines = True, lines[1:]
        body = textwrap.dedent("\n".join(lines))
        is_code = any(line.lstrip().startswith(("nnk ", "#")) or " nnk " in line for line in body.splitlines())
        if in_examples and verbatim and is_code:
            if examples:
                examples.append("")
            examples.extend(body.splitlines())
        else:
            other.append((verbatim, para))
    return examples, other


# -- rendering --------------------------------------------------------------------------------------------------------
def _inline(text: str) -> str:
    """Help text as Markdown text: no HTML tags (``<stem>``), no emphasis from a glob's ``*``."""
    return html.escape(" ".join(text.split()), quote=False).replace("*", r"\*")


def _cell(text: str) -> str:
    return _inline(text).replace("|", r"\|")


def _prose(paras: list[tuple[bool, str]]) -> list[str]:
    lines = []
    for verbatim, para in paras:
        if verbatim:
            import textwrap

            lines += ["```text", textwrap.dedent(para), "```", ""]
        else:
            lines += [_inline(para), ""]
    return lines


def usage(ctx: click.Context) -> str:
    """The usage line of ``--help``, without its ``Usage:`` prefix."""
    return f"{ctx.command_path} {' '.join(ctx.command.collect_usage_pieces(ctx))}"


def option_table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| Option | Description | Default |", "| --- | --- | --- |"]
    for names, text, default in rows:
        lines.append(f"| `{names}` | {_cell(text)} | {f'`{default}`' if default else ''} |")
    return lines + [""]


def command_page(name: str) -> str:
    """The Markdown page of ``nnk <name>``."""
    ctx = command_context(name)
    command = ctx.command
    lines = [
        f"# nnk {name}",
        "",
        "<!-- generated from the command by docs/hooks/cli_reference.py: edit the command, not this page -->",
        "",
    ]
    lines += _prose(paragraphs(command.help or ""))
    lines += ["## Usage", "", "```text", usage(ctx), "```", ""]
    lines += ["## Options", "", *option_table(option_rows(ctx))]
    examples, other = split_epilog(command.epilog or "")
    if examples:
        lines += ["## Examples", "", "```bash", *examples, "```", ""]
    lines += _prose(other)
    lines += [
        "Options shared by every command, and the exit codes: [the CLI reference](index.md), "
        "[exit codes](../exit-codes.md).",
        "",
    ]
    return "\n".join(lines)


def _relative(name: str) -> str:
    return page_uri(name).removeprefix(CLI_DIR + "/")


def commands_list() -> str:
    """A table of the commands, each linked to its page, with the first line of its help."""
    lines = ["| Command | What it does |", "| --- | --- |"]
    for name in command_names():
        help_text = command_context(name).command.help or ""
        first = paragraphs(help_text)[0][1] if help_text.strip() else ""
        lines.append(f"| [`nnk {name}`]({_relative(name)}) | {_cell(first)} |")
    return "\n".join(lines) + "\n"


def shared_options() -> str:
    """The options of ``nnk`` itself, then each option that several commands take, with those commands."""
    from nnkcli.cli import cli

    root = click.Context(cli, info_name="nnk", **cli.context_settings)
    lines = ["Options of `nnk` itself (before the command name):", "", *option_table(option_rows(root))]
    # an option is shared when several commands take it with the same help (--out of index and of classify
    # are two options)
    takers: dict[tuple[str, str, str], list[str]] = {}
    for name in command_names():
        for row in option_rows(command_context(name)):
            if row[0] not in ("-h, --help", "--help"):
                takers.setdefault(row, []).append(name)
    shared = sorted((row for row, names in takers.items() if len(names) > 1), key=lambda row: -len(takers[row]))
    lines += [
        "Options several commands take, with the same meaning (`-v`/`-q` are accepted before or after the "
        "command name):",
        "",
        "| Option | Commands | Description | Default |",
        "| --- | --- | --- | --- |",
    ]
    everyone = set(command_names())
    for row in shared:
        names, text, default = row
        used = "all" if set(takers[row]) == everyone else ", ".join(f"[{c}]({_relative(c)})" for c in takers[row])
        lines.append(f"| `{names}` | {used} | {_cell(text)} | {f'`{default}`' if default else ''} |")
    return "\n".join(lines) + "\n"


# -- the mkdocs hooks -------------------------------------------------------------------------------------------------
def _insert_nav(nav, pages: list[dict]) -> bool:
    """Put ``pages`` right after the nav entry of the CLI index (in whatever section holds it)."""
    if not isinstance(nav, list):
        return False
    for i, item in enumerate(nav):
        target = next(iter(item.values())) if isinstance(item, dict) and len(item) == 1 else item
        if target == INDEX:
            nav[i + 1 : i + 1] = [p for p in pages if p not in nav]
            return True
        if isinstance(target, list) and _insert_nav(target, pages):
            return True
    return False


def on_config(config, **kwargs):
    if config.nav is not None:
        pages = [{f"nnk {name}": page_uri(name)} for name in command_names()]
        if not _insert_nav(config.nav, pages):
            raise ValueError(f"mkdocs.yml: the nav has no entry {INDEX!r} to put the command pages after")
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for name in command_names():
        uri = page_uri(name)
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} is generated from the command: delete the file")
        files.append(File.generated(config, uri, content=command_page(name)))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri == INDEX:
        markdown = markdown.replace(COMMANDS_MARKER, commands_list()).replace(SHARED_MARKER, shared_options())
    return markdown
