"""An option shared by several commands is one option: one help text, one default, one metavar, exit 2 when bad.

Every command's ``--help`` is generated and parsed; each option that appears in several
commands must read the same in all of them, and a bad value for it must be a usage error
(exit 2, naming the option) in every command that has it. The few options that only share
a name (``--out`` is a different file in each command) or come in declared variants
(``--k``: one k or a SPEC) are listed below with the reason.
"""

from __future__ import annotations

import re

import click
import pytest

from nnkcli.cli import cli

#: what each command needs besides the option under test (nothing here exists: values are checked first)
ARGS = {
    "extract": ["nope.h5", "--split", "val"],
    "info": ["nope.h5"],
    "index": ["nope.h5"],
    "classify": ["nope.h5"],
    "sweep": ["nope.h5"],
    "merge": ["nope.h5"],
    "evaluate": ["nope.h5", "--history", "nope/h.jsonl"],
    "history": ["nope.jsonl"],
    "compare": ["a.h5", "b.h5"],
    "plot": ["nope.json", "--out", "nope.png"],
    "quality": ["nope.h5"],
    "audit": ["nope.h5", "--out", "nope/audit.csv"],
    "fewshot": ["nope.h5"],
    "probe": ["nope.h5"],
    "report": ["nope.h5"],
}

#: options that share only their name: a different thing in each command
SAME_NAME_ONLY = {
    "--out": "a different output file in each command",
    "--per-class": "classify adds per-class rows, compare a per-class comparison, fewshot draws N rows per class",
    "--plot": "a different figure in each command",
    "--tensorboard": "a different set of scalars in each command",
    "--split": "extract writes that split, quality measures it (default val), audit audits its labels (default train)",
    "--seed": "compare's bootstrap seed, quality's sample seed, fewshot's draw seed, probe's held-out draw",
    "--protocol": "the scoring preset of classify/sweep/evaluate/fewshot; extract's transform and feature preset",
}

#: options declared in variants (the same check and grammar): command -> variant; one wording per variant
VARIANTS = {
    "--k": {
        "classify": "one k",
        "compare": "compare's default k",
        "sweep": "SPEC",
        "evaluate": "SPEC",
        "quality": "one k among a split's other rows",
        "audit": "one k among a split's other rows",
        "fewshot": "a SPEC capped at the subset's rows, DINOv2's default",
        "report": "SPEC, the paper's k values by default",
    },
    # report adds markdown and latex to the formats every command has
    "--format": {
        **{name: "table|json|csv" for name in ARGS if name not in ("report", "plot")},
        "report": "+ markdown|latex",
    },
    "--gate-method": {"classify": "one run", "sweep": "one run", "merge": "one run", "evaluate": "history"},
    "--layer": {"extract": "a model's module, or a VISSL layer with --from", "evaluate": "a model's module"},
}

#: a bad value for every shared option that has one (flags and free text have none)
BAD = {
    "--alpha": "1",
    "--backend": "tpu",
    "--c-grid": "0,1",
    "--max-iter": "0",
    "--patience": "-1",
    "--fit-patience": "-1",
    "--tol": "0",
    "--val-fraction": "1",
    "--batch-size": "0",
    "--chunk-size": "0",
    "--confidence": "2",
    "--crop": "0",
    "--device": "tpu",
    "--features": "pool",
    "--format": "yaml",
    "--gate-method": "svm",
    "--interpolation": "nearest",
    "--k": "0",
    "--kernel": "rbf",
    "--lock-timeout": "-1",
    "--mean": "1,2",
    "--method": "svm",
    "--min-top1": "101",
    "--min-top5": "-1",
    "--plot": "x.txt",
    "--progress-every": "0",
    "--protocol": "simclr",
    "--query-split": "a/b",
    "--resize": "0",
    "--select-on": "val",
    "--seed": "x",
    "--select-queries": "0",
    "--search-kernel": "int8",
    "--shard": "3/3",
    "--split": "a/b",
    "--solver": "lbfgs",
    "--std": "0,1,1",
    "--temperature": "-1",
    "--threads": "0",
    "--top5-rule": "loose",
    "--train-split": "a/b",
    "--weighting": "x",
    "--workers": "-1",
    "--wandb": "a/b",
    "--mlflow": " ",
    "--mlflow-experiment": "",
}
#: shared options any value of which is valid while parsing (a path, a key, a name)
FREE = {"--index", "--model", "--layer", "--checkpoint-key", "--strip-prefix", "--out", "--tensorboard", "--title"}


def commands() -> list[str]:
    return list(cli.list_commands(click.Context(cli)))


def command(name: str) -> click.Command:
    return cli.get_command(click.Context(cli), name)


def help_entries(text: str) -> dict[str, tuple[str, str]]:
    """option -> (metavar, help as one line) from the ``Options:`` section of a help page."""
    entries: dict[str, list[str]] = {}
    current = None
    lines = text.splitlines()
    for line in lines[lines.index("Options:") + 1 :]:
        if not line.strip():
            break  # the examples follow the options
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            decl = m.group(1)
            names = [p.strip().split(" ")[0] for p in decl.split(",")]
            metavar = decl.split(" ")[-1] if " " in decl.split(",")[-1].strip() else ""
            current = [metavar, m.group(2) or ""]
            entries[max(names, key=len)] = current
        elif current is not None:
            current[1] = (current[1] + " " + line.strip()).strip()
    return {name: (metavar, " ".join(help_.split())) for name, (metavar, help_) in entries.items()}


@pytest.fixture(scope="module")
def pages(runner_module):
    out = {}
    for name in commands():
        res = runner_module.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, res.output
        out[name] = help_entries(res.stdout)
    return out


@pytest.fixture(scope="module")
def runner_module():
    from click.testing import CliRunner

    return CliRunner()


def shared(pages) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for name, entries in pages.items():
        for option in entries:
            users.setdefault(option, []).append(name)
    return {option: names for option, names in users.items() if len(names) > 1 and option not in SAME_NAME_ONLY}


def defaults(name: str) -> dict[str, object]:
    cmd = command(name)
    params = [*cmd.params, cmd.get_help_option(click.Context(cmd))]
    return {max(p.opts, key=len): p.default for p in params if isinstance(p, click.Option)}


def test_the_parser_reads_a_help_page(pages):
    assert pages["index"]["--hnsw-m"] == ("N", "hnsw: graph degree. [default: 32]")
    assert pages["classify"]["--device"][0] == "auto|cpu|cuda"
    assert "--k" in pages["sweep"] and "--train-split" in pages["index"]


def test_shared_options_read_the_same_everywhere(pages):
    found = shared(pages)
    assert {"--device", "--fp16", "--threads", "--train-split", "--k", "--temperature"} <= set(found)
    differ = []
    for option, names in found.items():
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(VARIANTS.get(option, {}).get(name, ""), []).append(name)
        for variant, members in groups.items():
            seen = {(pages[n][option], repr(defaults(n)[option])) for n in members}
            if len(seen) > 1:
                differ.append(
                    f"{option} ({variant or 'one variant'}): "
                    + "; ".join(f"{n}: {pages[n][option]} default {defaults(n)[option]!r}" for n in members)
                )
    assert differ == []


def test_every_variant_is_declared(pages):
    found = shared(pages)
    for option, variants in VARIANTS.items():
        assert sorted(variants) == sorted(found[option]), option


@pytest.mark.parametrize("option", sorted(BAD))
def test_a_bad_value_exits_2_in_every_command(runner, option):
    names = [n for n in commands() if option in {o for p in command(n).params for o in p.opts}]
    if option not in ("--plot",):
        assert len(names) > 1, f"{option} is no longer shared: drop it from BAD"
    for name in names:
        res = runner.invoke(cli, [name, *ARGS[name], option, BAD[option]])
        assert res.exit_code == 2, (name, res.stderr)
        invalid = [line for line in res.stderr.splitlines() if line.startswith("Error: Invalid value for ")]
        assert invalid and f"'{option}'" in invalid[0].split(":")[1], (name, res.stderr)  # an alias may be named too
        assert "Traceback" not in res.stderr


def test_every_shared_option_with_a_value_has_a_bad_one(pages):
    flags = {
        max(p.opts, key=len)
        for n in commands()
        for p in command(n).params
        if isinstance(p, click.Option) and (p.is_flag or p.count)
    }
    missing = sorted(set(shared(pages)) - set(BAD) - FREE - flags - {"--help"})
    assert missing == []


def test_device_says_the_same_in_every_command(runner):
    messages = set()
    for name in ("classify", "sweep", "compare", "evaluate"):
        res = runner.invoke(cli, [name, *ARGS[name], "--device", "tpu"])
        assert res.exit_code == 2
        messages.add(res.stderr.splitlines()[-1])
    assert messages == {
        ("Error: Invalid value for '--device': unknown device; choose one of auto, cpu, cuda (got 'tpu')")
    }


@pytest.mark.parametrize("value", ["1", "0"])
def test_index_hnsw_m_is_a_usage_error(runner, value):
    res = runner.invoke(cli, ["index", "nope.h5", "--type", "hnsw", "--hnsw-m", value])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == f"Error: Invalid value for '--hnsw-m': must be >= 2 (got {value})"


def test_index_options_come_from_index_params(pages):
    from nnkcli.index import INDEX_TYPES, IndexParams

    for d in IndexParams.declarations().values():
        _metavar, help_ = pages["index"][d.option]
        assert help_.startswith(d.help)
        if d.default is not None:
            assert help_.endswith(f"[default: {d.default}]")
    assert pages["index"]["--type"][0] == "|".join(INDEX_TYPES)


@pytest.mark.parametrize("args", [["classify", "nope.h5", "--shard", "0/2"], ["sweep", "nope.h5", "--shard", "0/2"]])
def test_shard_needs_out_is_one_usage_error(runner, args):
    res = runner.invoke(cli, args)
    assert res.exit_code == 2
    assert "Error: --shard needs --out: a shard's results are only useful merged" in res.stderr.splitlines()
