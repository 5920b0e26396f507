"""The command-line option bundles: each shared option is declared here, once.

A bundle is a decorator (as sqlite-utils shares its output options) that adds a group
of options to a command and hands the command one object instead of loose values:

``scoring_options``  -> ``scoring: ScoringOptions``   (classify, sweep, evaluate, compare)
``data_options``     -> ``data: DataOptions``          (classify, sweep, evaluate, compare)
``gate_options``     -> ``min_top1``, ``min_top5``     (classify, sweep, merge, evaluate)
``model_options``    -> ``model_options: dict``        (extract --images, evaluate; in ``_model_options``)

The options of a settings object are generated from its fields (``settings_option``):
the default, the allowed values, the help text and the metavar are the field's
(``nnkcli.settings``), and the value is checked while it is parsed by the check that the
object itself runs: a bad value is a usage error, exit 2, naming the option and the value.
"""

from __future__ import annotations

import functools
import math

import click

from nnkcli.errors import OptionError, SettingName
from nnkcli.evaluation.kspec import check_k_values, format_k_spec
from nnkcli.evaluation.options import (
    DEFAULT_K,
    DEFAULT_K_SPEC,
    PROTOCOL_FIELDS,
    DataOptions,
    ScoringOptions,
    apply_protocol,
    one_k,
)
from nnkcli.numerics.scores import METHODS
from nnkcli.settings import positive_floats


def bad_parameter(exc: OptionError) -> click.BadParameter:
    """click's usage error (exit 2) for an ``OptionError``: ``Invalid value for '--x': ...``."""
    text = f"{exc.reason} (got {exc.value!r})"
    if exc.hint:
        text += f"; {exc.hint}"
    return click.BadParameter(text)


def check_with(check):
    """A click callback running ``check(value, names)`` (skipped for None = not given)."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return check(value, SettingName(param.name, param.opts[0]))
        except OptionError as exc:
            raise bad_parameter(exc) from None

    return callback


def checked(cls, field: str):
    """A click callback running ``cls``'s check of ``field`` on the parsed value (None: not given, kept)."""
    return check_with(lambda value, names: cls.check_field(field, value, names))


def settings_option(cls, field: str, *aliases: str, check=None, **overrides):
    """The click option of one field of the settings class ``cls``, generated from its declaration.

    ``check`` replaces the field's own check (a command-line variant, such as a list of
    temperatures); ``overrides`` are click arguments only the command line has (a path type).
    """
    d = cls.declared(field)
    kwargs: dict = {"default": d.cli_default, "help": d.help}
    if d.is_flag:
        kwargs["is_flag"] = True
    else:
        kwargs.update(
            type=d.type or str,
            show_default=d.cli_default is not None,
            metavar=d.metavar or "|".join(map(str, d.choices or ())) or None,
            callback=check_with(check) if check is not None else checked(cls, field),
        )
    kwargs.update(overrides)
    return click.option(d.option, *aliases, field, **kwargs)


def k_option(*, single: str | None = None, default: str | None = None, help: str | None = None):
    """``--k SPEC``: the same grammar everywhere; ``single`` (a command of ``ONE_K``) allows one value."""
    S = ScoringOptions
    if single:
        return settings_option(
            S,
            "k_values",
            default=default or format_k_spec(S.declared("k_values").default),
            check=lambda value, names: one_k(value, names, single),
            help=help or "Neighbors per query: one k (the SPEC grammar of sweep, one value).",
        )
    extra = {"help": help} if help else {}
    return settings_option(S, "k_values", default=default or DEFAULT_K_SPEC, check=check_k_values, **extra)


def device_options() -> list:
    """``--device``/``--fp16``: one declaration for the search backend and the model (evaluate shares them)."""
    return [settings_option(ScoringOptions, "device"), settings_option(ScoringOptions, "fp16")]


def option_bundle(options, build):
    """A decorator adding ``options`` and calling ``build(kwargs)`` to fold their values into objects."""

    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            build(kwargs)
            return f(*args, **kwargs)

        for opt in reversed(options):
            wrapper = opt(wrapper)
        return wrapper

    return decorator


#: the options of ScoringOptions every scoring command takes, in the order of the help page
_SCORING = (
    "kernel",
    "temperature",
    "weighting",
    "chunk_size",
    "threads",
    "exclude_self",
    "confidence",
    "top5_rule",
    "solver",
    "protocol",
    "backend",
    "search_kernel",
)


def scoring_options(
    *,
    single_k: str | None = None,
    k_default: str | None = None,
    methods: bool = True,
    alpha: bool | None = None,
    k_help: str | None = None,
    device: bool = True,
    omit: tuple[str, ...] = (),
):
    """How queries are scored; the command receives ``scoring: ScoringOptions``.

    ``single_k`` (``"classify"``, ``"compare"``: a key of ``ONE_K``) takes one k;
    ``methods=False`` leaves out ``--method`` (``compare`` names a classifier per side);
    ``alpha`` adds ``--alpha`` (default: when several k are chosen among); ``device=False``
    leaves out ``--device``/``--fp16`` (``evaluate``, whose model options already have them:
    there the search uses the extraction's device); ``omit`` leaves out fields of ``_SCORING`` that
    mean nothing to the command (``fewshot``: ``exclude_self``).
    """
    S = ScoringOptions
    options = [k_option(single=single_k, default=k_default, help=k_help)]
    fields = [field for field in _SCORING if field not in omit]
    params = ["k_values", *fields]
    if methods:
        options.append(settings_option(S, "methods"))
        params.append("methods")
    for field in fields:
        # --temperature T[,T...] fills two fields: temperature and temperature_grid (apply_protocol)
        options.append(settings_option(S, field, check=positive_floats if field == "temperature" else None))
    if device:
        options += device_options()
        params += ["device", "fp16"]
    if alpha if alpha is not None else not single_k:  # choosing among several k, or between two sides
        options += [settings_option(S, name) for name in ("alpha", "select_on", "select_queries")]
        params += ["alpha", "select_on", "select_queries"]

    def build(kwargs):
        from click.core import ParameterSource

        settings = {name: kwargs.pop(name) for name in params}
        if settings["protocol"] is not None:  # the preset fills what was not given on the command line
            ctx = click.get_current_context()
            for name in PROTOCOL_FIELDS:
                if name in settings and ctx.get_parameter_source(name) not in (
                    ParameterSource.COMMANDLINE,
                    ParameterSource.ENVIRONMENT,
                ):
                    del settings[name]
        kwargs["scoring"] = ScoringOptions(**apply_protocol(settings, one_k=bool(single_k)))

    return option_bundle(options, build)


def split_option(field: str = "train_split", *aliases: str):
    """``--train-split``/``--query-split`` (also used alone, by ``nnk index``, with an old alias)."""
    return settings_option(DataOptions, field, *aliases)


def shard_option(f):
    """``--shard I/N`` (classify, sweep): the command receives ``shard`` to fold into its ``data``."""
    return settings_option(DataOptions, "shard")(f)


_DATA = ("train_split", "query_split", "index_path", "rebuild_index", "strict_provenance")


def data_options(f):
    """Which splits and saved index; the command receives ``data: DataOptions``."""
    options = [
        settings_option(
            DataOptions,
            field,
            **({"type": click.Path(dir_okay=False), "callback": None} if field == "index_path" else {}),
        )
        for field in _DATA
    ]

    def build(kwargs):
        kwargs["data"] = DataOptions(**{name: kwargs.pop(name) for name in _DATA})

    return option_bundle(options, build)(f)


def percent(value, option):
    """A gate threshold: a finite percentage in [0, 100] (the rule of ``metrics.check_gate_value``)."""
    from nnkcli.numerics.metrics import check_gate_value

    try:
        return check_gate_value(option, value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "must be a finite percentage in [0, 100]") from None


def points(value, option):
    """A non-negative, finite number of accuracy points."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise OptionError(option, value, "must be a finite number of points >= 0")
    return float(value)


def gate_options(f=None, *, history: bool = False):
    """``--min-top1``/``--min-top5`` (exit 3 below) and ``--gate-method``.

    For classify and sweep ``--gate-method`` is ``all`` (default), ``nnk`` or ``knn``; for a
    history (``history=True``: evaluate) it is the one method whose newest best is gated.
    """
    from nnkcli.numerics.metrics import GATE_METHODS

    if history:
        gate_method = click.option(
            "--gate-method",
            type=click.Choice(METHODS),
            default=None,
            help="Method whose best top-1 the gates check [default: nnk, or the only --method].",
        )
    else:
        gate_method = click.option(
            "--gate-method",
            type=click.Choice(GATE_METHODS),
            default="all",
            show_default=True,
            help="Which method's accuracy --min-top1/--min-top5 check.",
        )
    options = [
        click.option(
            "--min-top1",
            type=float,
            default=None,
            metavar="PCT",
            callback=check_with(percent),
            help="Exit with code 3 when a method's top-1 (%) is below PCT.",
        ),
        click.option(
            "--min-top5",
            type=float,
            default=None,
            metavar="PCT",
            callback=check_with(percent),
            help="Exit with code 3 when a method's top-5 (%) is below PCT.",
        ),
        gate_method,
    ]

    def decorator(g):
        for opt in reversed(options):
            g = opt(g)
        return g

    return decorator(f) if f is not None else decorator


def given_on_command_line(ctx: click.Context, names) -> dict:
    """The values of ``names`` that the user gave (not defaults): what a history records."""
    from click.core import ParameterSource

    given = {}
    for name in names:
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            given[name] = ctx.params[name]
    return given


def _plot_suffix(ctx, param, value):
    from pathlib import Path

    from nnkcli.plots import PLOT_SUFFIXES

    if value is not None and Path(value).suffix.lower() not in PLOT_SUFFIXES:
        raise click.BadParameter(
            f"unknown file type {Path(value).suffix or '(none)'!r} (got {str(value)!r}); "
            f"use a {', '.join(PLOT_SUFFIXES[:-1])} or {PLOT_SUFFIXES[-1]} file name"
        )
    return value


def plot_option(dest: str, help: str, path_type=None):
    """``--plot FILE`` (.png, .svg or .pdf, checked while parsing)."""
    return click.option(
        "--plot",
        dest,
        type=click.Path(dir_okay=False, path_type=path_type),
        default=None,
        metavar="FILE",
        callback=_plot_suffix,
        help=help,
    )


def title_option(f):
    """``--title TEXT``: the figure's title instead of the one derived from what it shows."""
    return click.option(
        "--title",
        default=None,
        metavar="TEXT",
        help="Title of the figure [default: what it shows: the store or history, split and size].",
    )(f)


def _leave_one_out_k(value, name):
    from nnkcli.evaluation.quality import one_k

    return one_k(value, name)


def leave_one_out_k_option(f):
    """``--k K`` of the commands that search each row of a split among its other rows (quality, audit):
    one k, passed to the command as the int ``k_values``."""
    return settings_option(
        ScoringOptions,
        "k_values",
        default=str(DEFAULT_K),
        check=_leave_one_out_k,
        metavar="K",
        help="Neighbors of each row among the split's other rows (one k, at most the split's rows - 1).",
    )(f)
