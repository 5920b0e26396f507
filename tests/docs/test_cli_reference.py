"""The reference pages hold every command, every option and every public name.

The generator (docs/hooks/cli_reference.py) is checked directly in the fast tier; the built site
(``mkdocs build --strict``, which needs the docs extra) in the slow tier.
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys

import click
import pytest

import nnkcli
from nnk_docs import REPO
from nnkcli.cli import COMMANDS


def _load_generator():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _options(name):
    """Every option string of ``nnk <name>`` (both spellings of a flag pair, aliases)."""
    ctx = gen.command_context(name)
    return [
        (opt, param)
        for param in ctx.command.get_params(ctx)
        if isinstance(param, click.Option) and not param.hidden
        for opt in (*param.opts, *param.secondary_opts)
    ]


def _examples(name):
    return gen.split_epilog(gen.command_context(name).command.epilog or "")[0]


def test_every_command_has_a_page_and_examples():
    assert gen.command_names() == list(COMMANDS)
    assert len({gen.page_uri(name) for name in COMMANDS}) == len(COMMANDS)
    assert gen.INDEX not in {gen.page_uri(name) for name in COMMANDS}  # nnk index: not the section's index
    for name in COMMANDS:
        assert _examples(name), f"nnk {name} has no Examples: block in its docstring"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_generated_page_holds_every_option_its_help_and_default(name):
    page = gen.command_page(name)
    assert page.startswith(f"# nnk {name}\n")
    for opt, param in _options(name):
        row = rf"^\| `[^`]*(?<![\w-]){re.escape(opt)}(?![\w-])[^`]*` \|"  # the option's row of the table
        assert re.search(row, page, re.M), f"nnk {name}: {opt} missing"
        if param.help:
            assert gen._cell(" ".join(param.help.split()[:6])) in page, f"nnk {name} {opt}: help"
        if param.show_default and param.default not in (None, False, ()):
            assert re.search(rf"\| `{re.escape(str(param.default))}` \|$", page, re.M), f"nnk {name} {opt}: default"
    examples = page.split("## Examples\n\n```bash\n", 1)[1].split("```", 1)[0]
    assert examples.splitlines() == _examples(name)


def test_examples_keep_their_comments_and_continuations():
    example = _examples("evaluate")
    assert any(line.startswith("# crontab") for line in example)
    assert any(line.endswith("\\") for line in example)
    assert all(not line.startswith(" ") for line in example if line.startswith(("nnk", "# ")))


def test_the_index_lists_the_commands_and_the_shared_options():
    listed = gen.commands_list()
    for name in COMMANDS:
        assert f"[`nnk {name}`]({gen.page_uri(name).split('/')[-1]})" in listed
    shared = gen.shared_options()
    for opt in ("-q, --quiet", "-v, --verbose", "--version", "--format [table|json|csv]", "--lock-timeout SECONDS"):
        assert f"`{opt}`" in shared


def test_the_nav_gets_a_page_per_command_after_the_index():
    nav = [{"Home": "index.md"}, {"Reference": [{"CLI": [gen.INDEX]}, {"API": "reference/api.md"}]}]
    assert gen._insert_nav(nav, [{f"nnk {n}": gen.page_uri(n)} for n in COMMANDS])
    cli_section = nav[1]["Reference"][0]["CLI"]
    assert cli_section[0] == gen.INDEX and [next(iter(p.values())) for p in cli_section[1:]] == [
        gen.page_uri(n) for n in COMMANDS
    ]
    assert not gen._insert_nav([{"Home": "index.md"}], [])


# -- the built site ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env_path = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": env_path, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


def _text(path, tag=" "):
    """The article of a built page, as text (tags replaced by ``tag``, entities decoded)."""
    page = path.read_text()
    article = page[page.find("<article") : page.find("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", tag, article))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_built_cli_reference_holds_every_option(site, name):
    page = site / gen.page_uri(name).removesuffix(".md") / "index.html"
    text = _text(page)
    for opt, param in _options(name):
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), f"built page of nnk {name}: {opt} missing"
        if param.help:
            assert " ".join(param.help.split()[:6]) in " ".join(text.split()), f"nnk {name} {opt}: help missing"
    assert _examples(name)[0].strip() in _text(page, tag="")  # the highlighted code block


@pytest.mark.slow
def test_the_built_site_links_every_command_page(site):
    home = (site / "index.html").read_text()
    index = _text(site / "reference" / "cli" / "index.html")
    for name in COMMANDS:
        assert f'reference/cli/{gen.page_uri(name).split("/")[-1].removesuffix(".md")}/"' in home, f"nav: nnk {name}"
        assert f"nnk {name}" in index
    for opt in ("--quiet", "--verbose", "--format", "--lock-timeout", "--version"):
        assert opt in index


@pytest.mark.slow
def test_the_built_api_reference_holds_every_public_name(site):
    page = (site / "reference" / "api" / "index.html").read_text()
    ids = set(re.findall(r'<h2 id="([^"]+)"', page))
    for name in nnkcli.__all__:
        if name == "__version__":
            assert "nnkcli.__version__" in _text(site / "reference" / "api" / "index.html")
            continue
        assert any(i == name or i.endswith(f".{name}") for i in ids), f"the API reference has no heading for {name}"
        target = getattr(nnkcli, name)
        assert f"{target.__module__}.{name}" in ids, f"{name} is documented from another module than it lives in"
