"""Every bad option value is a usage error: exit 2, naming the option and the value, before any work.

The store and the history named here do not exist: an option value is checked while it
is parsed, so nothing is opened (a value only wrong for the data, such as k larger than
the train split, is exit 1: see test_eval_commands.py).
"""

from __future__ import annotations

import pytest

from nnkcli.cli import cli

SCORING = [
    ("--method", "svm", "unknown method; choose one of nnk, knn, both (got 'svm')"),
    ("--kernel", "rbf", "unknown kernel; choose one of cosine, gaussian (got 'rbf')"),
    ("--weighting", "inverse", "unknown kNN weighting; choose one of exp, similarity, uniform (got 'inverse')"),
    ("--temperature", "0", "must be a finite number > 0 (got 0.0)"),
    ("--temperature", "-0.5", "must be a finite number > 0 (got -0.5)"),
    ("--temperature", "nan", "must be a finite number > 0 (got nan)"),
    ("--temperature", "inf", "must be a finite number > 0 (got inf)"),
    ("--chunk-size", "0", "must be >= 1 (got 0)"),
    ("--chunk-size", "-3", "must be >= 1 (got -3)"),
    ("--threads", "0", "must be >= 1 (got 0)"),
    ("--k", "0", "bad k token '0': k must be >= 1 (got '0')"),
    ("--k", "10..x", "bad k token '10..x' (got '10..x')"),
    ("--k", "20..10", "bad k range '20..10': need 1 <= A <= B and a step >= 1 (got '20..10')"),
    ("--train-split", "a/b", "invalid split name (got 'a/b')"),
    ("--query-split", "", "invalid split name (got '')"),
    ("--min-top1", "nan", "must be a finite percentage in [0, 100] (got nan)"),
    ("--min-top1", "101", "must be a finite percentage in [0, 100] (got 101.0)"),
    ("--min-top5", "-1", "must be a finite percentage in [0, 100] (got -1.0)"),
    ("--confidence", "1", "must be strictly between 0 and 1 (got 1.0)"),
    ("--confidence", "nan", "must be strictly between 0 and 1 (got nan)"),
]

MODEL = [
    ("--resize", "0", "--resize must be a positive integer, got 0"),
    ("--crop", "0", "0 is not in the range x>=1"),
    ("--mean", "0.5,0.5", "expected 3 comma-separated numbers (R,G,B), got 0.5,0.5"),
    ("--mean", "a,b,c", "expected 3 comma-separated numbers (R,G,B), got 'a,b,c'"),
    ("--std", "0,1,1", "--std values must be positive, got 0.0,1.0,1.0"),
    ("--std", "nan,1,1", "expected finite numbers (R,G,B), got nan,1.0,1.0"),
    ("--interpolation", "nearest", "'nearest' is not one of 'bicubic', 'bilinear'"),
    ("--device", "tpu", "unknown device; choose one of auto, cpu, cuda (got 'tpu')"),  # as classify says it
    ("--batch-size", "0", "0 is not in the range x>=1"),
    ("--workers", "-1", "-1 is not in the range x>=0"),
]

COMMANDS = {
    "classify": ["classify", "nope.h5"],
    "sweep": ["sweep", "nope.h5"],
    "evaluate": ["evaluate", "nope.h5", "--history", "nope/h.jsonl"],
}


def check_usage_error(runner, args, option, message):
    res = runner.invoke(cli, args)
    assert res.exit_code == 2, res.stderr
    last = res.stderr.splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{option}'"), last
    assert last.endswith(message) or message in last, last
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("option, value, message", SCORING)
def test_scoring_data_and_gate_options(runner, command, option, value, message):
    check_usage_error(runner, [*COMMANDS[command], option, value], option, message)


@pytest.mark.parametrize("command", ["sweep", "evaluate"])
@pytest.mark.parametrize("value", ["0", "1", "nan"])
def test_alpha(runner, command, value):
    check_usage_error(
        runner,
        [*COMMANDS[command], "--alpha", value],
        "--alpha",
        f"must be strictly between 0 and 1 (got {float(value)!r})",
    )


@pytest.mark.parametrize("command", ["classify", "sweep"])
def test_gate_method_of_one_evaluation(runner, command):
    check_usage_error(
        runner, [*COMMANDS[command], "--gate-method", "svm"], "--gate-method", "'svm' is not one of 'all', 'nnk', 'knn'"
    )


def test_classify_takes_one_k(runner):
    check_usage_error(
        runner,
        ["classify", "nope.h5", "--k", "5,10"],
        "--k",
        "classify evaluates one k (got '5,10'); use 'nnk sweep' for several k",
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("-1", "must be a finite number of points >= 0 (got -1.0)"),
        ("nan", "must be a finite number of points >= 0 (got nan)"),
    ],
)
def test_fail_on_regression(runner, value, message):
    check_usage_error(runner, [*COMMANDS["evaluate"], "--fail-on-regression", value], "--fail-on-regression", message)


def test_gate_method(runner):
    check_usage_error(
        runner, [*COMMANDS["evaluate"], "--gate-method", "svm"], "--gate-method", "'svm' is not one of 'nnk', 'knn'"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "nope.h5", "--split", "val", "--images", "imgs", "--model", "torchvision:resnet18"],
        ["evaluate", "ck.pth", "--history", "nope/h.jsonl", "--model", "torchvision:resnet18"],
    ],
)
@pytest.mark.parametrize("option, value, message", MODEL)
def test_model_options(runner, command, option, value, message):
    check_usage_error(runner, [*command, option, value], option, message)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--nlist", "0", "must be >= 1 (got 0)"),
        ("--nprobe", "-2", "must be >= 1 (got -2)"),
        ("--hnsw-m", "0", "must be >= 2 (got 0)"),
        ("--hnsw-m", "1", "must be >= 2 (got 1)"),
        ("--ef-search", "0", "must be >= 1 (got 0)"),
        ("--ef-construction", "0", "must be >= 1 (got 0)"),
        ("--threads", "0", "must be >= 1 (got 0)"),
        ("--type", "foo", "unknown index type; choose one of flat, ivf, hnsw (got 'foo')"),
    ],
)
def test_index_options(runner, option, value, message):
    check_usage_error(runner, ["index", "nope.h5", option, value], option, message)


def test_split_names(runner):
    check_usage_error(
        runner, ["index", "nope.h5", "--train-split", "a b"], "--train-split", "invalid split name (got 'a b')"
    )
    check_usage_error(
        runner, ["extract", "nope.h5", "--split", "x/y", "--from", "a.npy"], "--split", "invalid split name (got 'x/y')"
    )


def test_format(runner):
    check_usage_error(runner, ["classify", "nope.h5", "--format", "yaml"], "--format", "'yaml' is not one of")
