"""The command-line option bundles: each shared option is declared here, once.

A bundle is a decorator (as sqlite-utils shares its output options) that adds a group
of options to a command and hands the command one object instead of loose values:

``scoring_options``  -> ``scoring: ScoringOptions``   (classify, sweep, evaluate)
``data_options``     -> ``data: DataOptions``          (classify, sweep, evaluate)
``gate_options``     -> ``min_top1``, ``min_top5``     (classify, sweep, evaluate)
``model_options``    -> ``model_options: dict``        (extract --images, evaluate)

Every value is checked while it is parsed, by the check that the options object itself
runs (``nnkcli.evaluation.options``): a bad value is a usage error, exit 2, naming the
option and the value. The allowed values shown in the help come from the same lists.
"""

from __future__ import annotations

import functools
import math

import click

from nnkcli.errors import OptionError
from nnkcli.evaluation.options import (
    DEFAULT_K,
    DEFAULT_K_SPEC,
    DEFAULT_SELECT_QUERIES,
    K_SPEC_HELP,
    BACKENDS,
    DEVICES,
    METHOD_CHOICES,
    METHODS,
    PROTOCOL_FIELDS,
    SELECT_ON,
    DataOptions,
    ScoringOptions,
    apply_protocol,
    check_k_values,
    positive_floats,
)
from nnkcli.evaluation.protocols import PROTOCOLS, SOLVERS
from nnkcli.numerics.kernels import KERNELS
from nnkcli.numerics.scores import TOP5_RULES, WEIGHTINGS


def bad_parameter(exc: OptionError) -> click.BadParameter:
    """click's usage error (exit 2) for an ``OptionError``: ``Invalid value for '--x': ...``."""
    text = f"{exc.reason} (got {exc.value!r})"
    if exc.hint:
        text += f"; {exc.hint}"
    return click.BadParameter(text)


def checked(cls, field: str):
    """A click callback running ``cls``'s check of ``field`` on the parsed value."""

    def callback(ctx, param, value):
        try:
            return cls.check_field(field, value)
        except OptionError as exc:
            raise bad_parameter(exc) from None

    return callback


def check_with(check):
    """A click callback running ``check(value, option)`` (skipped for None = not given)."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return check(value, param.opts[0])
        except OptionError as exc:
            raise bad_parameter(exc) from None

    return callback


def _one_k(value, option):
    ks = check_k_values(value, option)
    if len(ks) != 1:
        raise OptionError(option, value, "classify evaluates one k", hint="use 'nnk sweep' for several k")
    return ks


def k_option(*, single: bool, default: str | None = None):
    """``--k SPEC``: the same grammar everywhere; ``single`` allows exactly one value (classify)."""
    if single:
        return click.option(
            "--k", "k_values", default=str(default or DEFAULT_K), show_default=True, metavar="SPEC",
            callback=check_with(_one_k), help="Neighbors per query: one k (the SPEC grammar of sweep, one value).",
        )
    return click.option(
        "--k", "k_values", default=default or DEFAULT_K_SPEC, show_default=True, metavar="SPEC",
        callback=check_with(check_k_values), help=f"k values: {K_SPEC_HELP}.",
    )


def _bundle(options, build):
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


_SCORING_PARAMS = ("methods", "k_values", "kernel", "temperature", "weighting", "exclude_self", "chunk_size",
                   "threads", "confidence", "backend", "top5_rule", "solver", "protocol")


def scoring_options(*, single_k: bool = False, k_default: str | None = None, methods: bool = True,
                    alpha: bool | None = None, k_help: str | None = None, device: bool = True):
    """How queries are scored; the command receives ``scoring: ScoringOptions``.

    ``methods=False`` leaves out ``--method`` (``compare`` names a classifier per side);
    ``alpha`` adds ``--alpha`` (default: when several k are chosen among); ``device=False``
    leaves out ``--device``/``--fp16`` (``evaluate``, whose model options already have them:
    there the search uses the extraction's device).
    """
    S = ScoringOptions
    k_opt = k_option(single=single_k, default=k_default)
    if k_help is not None:
        k_opt = click.option("--k", "k_values", type=click.IntRange(min=1), default=int(k_default or DEFAULT_K),
                             show_default=True, metavar="K", callback=lambda ctx, param, value: (value,), help=k_help)
    options = [k_opt]
    if methods:
        options.append(click.option("--method", "methods", default="both", show_default=True,
                                    metavar="|".join(METHOD_CHOICES), callback=checked(S, "methods"),
                                    help="Which classifiers to run."))
    options += [
        click.option("--kernel", default="cosine", show_default=True, metavar="|".join(KERNELS),
                     callback=checked(S, "kernel"),
                     help="NNK kernel: (1+cos)/2, or exp(-d^2/2s^2) with s = k-th neighbor distance / 3."),
        click.option("--temperature", default="0.07", show_default=True, metavar="T[,T...]",
                     callback=check_with(positive_floats),
                     help="kNN weights exp(similarity / T), as DINO; T > 0. A list such as 0.02,0.05,0.07 gives "
                          "one kNN result per T from the same neighbors (no new search)."),
        click.option("--weighting", default="exp", show_default=True, metavar="|".join(WEIGHTINGS),
                     callback=checked(S, "weighting"), help="kNN vote weights: exp(s/T) as DINO, s, or 1."),
        click.option("--chunk-size", type=int, default=None, metavar="N", callback=checked(S, "chunk_size"),
                     help="Queries per scoring chunk (default: sized to a 512 MiB working-memory budget "
                          "shared by the threads)."),
        click.option("--threads", type=int, default=None, metavar="N", callback=checked(S, "threads"),
                     help="Threads for the whole run; caps faiss, BLAS and torch pools (default: the cores "
                          "this process may use)."),
        click.option("--exclude-self", is_flag=True,
                     help="Leave-one-out: skip each query's own row (query split = train split)."),
        click.option("--confidence", type=float, default=0.95, show_default=True, metavar="LEVEL",
                     callback=checked(S, "confidence"),
                     help="Level of the interval shown with every accuracy (Wilson; bootstrap for balanced)."),
        click.option("--top5-rule", default="strict", show_default=True, metavar="|".join(TOP5_RULES),
                     callback=checked(S, "top5_rule"),
                     help="strict: a class with zero score never counts for top-5; inclusive: rank every class, "
                          "as solo-learn, VISSL, DINOv2 and the NNK paper's code do."),
        click.option("--solver", default="exact", show_default=True, metavar="|".join(SOLVERS),
                     callback=checked(S, "solver"),
                     help="NNK solver: exact (KKT-certified) or pruning (the NNK paper's code, to reproduce its "
                          "tables; reports what the approximation costs)."),
        click.option("--protocol", default=None, metavar="|".join(PROTOCOLS), callback=checked(S, "protocol"),
                     help="Preset k values, temperature, top-5 rule and solver of another tool (README "
                          "\"Protocols\"); options given explicitly override it."),
    ]
    options.append(click.option(
        "--backend", default=None, metavar="|".join(BACKENDS), callback=checked(S, "backend"),
        help="Neighbor search: faiss (the saved index) or torch (chunked matmul + top-k) "
             "[default: torch on CUDA, else faiss]."))
    params = [p for p in _SCORING_PARAMS if methods or p != "methods"]
    if device:
        options += [
            click.option("--device", default="auto", show_default=True, metavar="|".join(DEVICES),
                         callback=checked(S, "device"),
                         help="Where the torch backend searches; auto = CUDA when torch sees a GPU."),
            click.option("--fp16", is_flag=True, help="torch backend: multiply in float16 (re-ranked exactly)."),
        ]
        params += ["device", "fp16"]
    if alpha if alpha is not None else not single_k:  # choosing among several k, or between two sides
        help_text = ("Significance level of the paired tests of each k against the best (McNemar)." if not single_k
                     else "Significance level of the paired test of B against A (McNemar).")
        options.append(click.option("--alpha", type=float, default=0.05, show_default=True, metavar="A",
                                    callback=checked(S, "alpha"), help=help_text))
        params.append("alpha")
        options += [
            click.option("--select-on", default=None, metavar="|".join(SELECT_ON), callback=checked(S, "select_on"),
                         help="Choose k (and T) by leave-one-out top-1 on the train split, never the query "
                              "split, and report the query split there (\"selected\"); the gates use it."),
            click.option("--select-queries", type=int, default=DEFAULT_SELECT_QUERIES, show_default=True,
                         metavar="N", callback=checked(S, "select_queries"),
                         help="Seeded random train rows the leave-one-out selection uses (all rows if fewer)."),
        ]
        params += ["select_on", "select_queries"]

    def build(kwargs):
        from click.core import ParameterSource

        settings = {name: kwargs.pop(name) for name in params}
        if settings["protocol"] is not None:  # the preset fills what was not given on the command line
            ctx = click.get_current_context()
            for name in PROTOCOL_FIELDS:
                if name in settings and ctx.get_parameter_source(name) not in (
                        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
                    del settings[name]
        kwargs["scoring"] = ScoringOptions(**apply_protocol(settings, one_k=single_k))

    return _bundle(options, build)


_DATA_PARAMS = ("train_split", "query_split", "index_path", "rebuild_index", "strict_provenance")


def split_option(name: str = "--train-split", default: str = "train", help: str = "Split searched for neighbors.",
                 *aliases: str):
    """``--train-split``/``--query-split`` (also used alone, by ``nnk index``, with an old alias)."""
    field = name.lstrip("-").replace("-", "_")
    return click.option(name, *aliases, field, default=default, show_default=True, metavar="NAME",
                        callback=checked(DataOptions, field), help=help)


def shard_option(f):
    """``--shard I/N`` (classify, sweep): the command receives ``shard`` to fold into its ``data``."""
    return click.option(
        "--shard", default=None, metavar="I/N", callback=check_with(lambda v, o: DataOptions.check_field("shard", v)),
        help="Evaluate only the I-th (from 0) of N contiguous ranges of the query split; needs --out PART.h5, "
             "see 'nnk merge'.")(f)


def data_options(f):
    """Which splits and saved index; the command receives ``data: DataOptions``."""
    options = [
        split_option("--train-split", "train", "Split searched for neighbors."),
        split_option("--query-split", "val", "Split whose rows are classified."),
        click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
                     help="Saved index (default: STORE's <stem>.<train-split>.faiss if present, else built in memory)."),
        click.option("--rebuild-index", is_flag=True,
                     help="Rebuild (and save) a stale or damaged saved index instead of refusing it."),
        click.option("--strict-provenance", is_flag=True,
                     help="Exit 1 when the train and query splits differ in provenance (model, checkpoint, "
                          "transform, source format, dtype) instead of warning."),
    ]

    def build(kwargs):
        kwargs["data"] = DataOptions(**{name: kwargs.pop(name) for name in _DATA_PARAMS})

    return _bundle(options, build)(f)


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
            "--gate-method", type=click.Choice(METHODS), default=None,
            help="Method whose best top-1 the gates check [default: nnk, or the only --method].")
    else:
        gate_method = click.option(
            "--gate-method", type=click.Choice(GATE_METHODS), default="all", show_default=True,
            help="Which method's accuracy --min-top1/--min-top5 check.")
    options = [
        click.option("--min-top1", type=float, default=None, metavar="PCT", callback=check_with(percent),
                     help="Exit with code 3 when a method's top-1 (%) is below PCT."),
        click.option("--min-top5", type=float, default=None, metavar="PCT", callback=check_with(percent),
                     help="Exit with code 3 when a method's top-5 (%) is below PCT."),
        gate_method,
    ]

    def decorator(g):
        for opt in reversed(options):
            g = opt(g)
        return g

    return decorator(f) if f is not None else decorator


def check_gate_method(gate_method: str, methods, gated: bool) -> None:
    """``--gate-method M`` with a gate needs M among the methods run: a usage error (exit 2) before any work."""
    if gated and gate_method not in ("all", None) and gate_method not in methods:
        raise click.UsageError(f"--gate-method {gate_method} is not among the methods run "
                               f"(--method {'both' if set(methods) == set(METHODS) else ','.join(methods)})")


# -- the model and its transform: extract --images and evaluate -----------------------------------
MODEL_PARAMS = ("model", "checkpoint_key", "strip_prefix", "trust_checkpoint", "resize", "crop", "interpolation",
                "mean", "std", "device", "batch_size", "workers", "fp16", "skip_bad_images")


def _transform_check(field: str):
    """Parse (R,G,B for mean/std) and check one transform field with ``EvalTransform``'s own rule."""

    def callback(ctx, param, value):
        from nnkcli.errors import InputError
        from nnkcli.extract.images import EvalTransform

        if value is None:
            return None
        if field in ("mean", "std"):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise click.BadParameter(f"expected 3 comma-separated numbers (R,G,B), got {value!r}") from None
            if len(value) != 3:
                raise click.BadParameter(f"expected 3 comma-separated numbers (R,G,B), got {','.join(map(str, value))}")
            if not all(math.isfinite(v) for v in value):
                raise click.BadParameter(f"expected finite numbers (R,G,B), got {','.join(map(str, value))}")
        if field == "crop":
            return value  # checked against --resize by the transform, once both are known
        try:
            EvalTransform(**{field: value}, **({"crop": 1} if field == "resize" else {}))
        except InputError as exc:
            raise click.BadParameter(exc.message + (f"; {exc.hint}" if exc.hint else "")) from None
        return value

    return callback


def model_options(f):
    """The model, its checkpoint handling and its evaluation transform (``MODEL_PARAMS``)."""
    from nnkcli.extract.images import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalTransform

    def rgb(values):
        return ",".join(f"{v:g}" for v in values)

    options = [
        click.option("--model", default=None, metavar="SPEC",
                     help="torchvision:NAME, torchscript:FILE.pt or MODULE:CALLABLE."),
        click.option("--checkpoint-key", default=None, metavar="KEY",
                     help="Key of the nested state dict, a.b for deeper (default: auto-detect "
                          "state_dict/model/teacher/...)."),
        click.option("--strip-prefix", multiple=True, metavar="PREFIX",
                     help="Key prefix to remove (default: auto-detect module./backbone./...). Repeatable."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow arbitrary pickled objects in the checkpoint (unpickling runs code)."),
        click.option("--resize", type=int, default=EvalTransform.resize, show_default=True, metavar="PX",
                     callback=_transform_check("resize"), help="Shorter side before cropping."),
        click.option("--crop", type=click.IntRange(min=1), default=EvalTransform.crop, show_default=True,
                     metavar="PX", help="Center-crop size (at most --resize)."),
        click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=EvalTransform.interpolation,
                     show_default=True, help="Resize interpolation (bicubic: DINO's evaluation protocol)."),
        click.option("--mean", default=rgb(IMAGENET_MEAN), show_default=True, metavar="R,G,B",
                     callback=_transform_check("mean"), help="Normalization mean."),
        click.option("--std", default=rgb(IMAGENET_STD), show_default=True, metavar="R,G,B",
                     callback=_transform_check("std"), help="Normalization std (each > 0)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="auto: CUDA when available."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
                     help="Images per forward pass."),
        click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True, metavar="N",
                     help="DataLoader worker processes decoding images."),
        click.option("--fp16", is_flag=True, help="Half-precision forward pass (CUDA only)."),
        click.option("--skip-bad-images", is_flag=True, help="Skip (and count) files that cannot be decoded."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


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
        raise click.BadParameter(f"unknown file type {Path(value).suffix or '(none)'!r} (got {str(value)!r}); "
                                 f"use a {', '.join(PLOT_SUFFIXES[:-1])} or {PLOT_SUFFIXES[-1]} file name")
    return value


def plot_option(dest: str, help: str, path_type=None):
    """``--plot FILE`` (.png, .svg or .pdf, checked while parsing)."""
    return click.option("--plot", dest, type=click.Path(dir_okay=False, path_type=path_type), default=None,
                        metavar="FILE", callback=_plot_suffix, help=help)
