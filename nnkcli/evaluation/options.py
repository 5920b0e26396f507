"""How queries are scored: one frozen options object, its allowed values and its checks.

``ScoringOptions`` is built once (by the CLI's option bundle, or by ``classify``/``sweep``
from keyword arguments), validated once on construction, passed whole to the core and
recorded whole (``as_dict()``) as ``"parameters"`` in every JSON document, predictions
file and history line. ``DataOptions`` says which splits and index one evaluation uses.

Every field is declared once (``nnkcli.settings``): its default, Python name, option,
check, allowed values, help and metavar. The command line generates its options from
these declarations (``commands/_options.py``), so nothing is written twice::

    temperature: float = setting(0.07, positive_float, metavar="T[,T...]", help="kNN weights ...")

The check normalises the value (``"both"`` -> ``("nnk", "knn")``, ``"10..30"`` ->
``(10, 20, 30)``) and raises ``OptionError`` (a ``ValueError``; exit 2 on the command
line) naming the Python parameter here and the option on the command line. The rules
that tie settings together (one k, a shard needs an output) are functions below, raised
as ``OptionConflict`` wherever they apply. To add a setting: one field here, a test and
a line in the docs (reference/options.md).

Examples
--------
>>> opts = ScoringOptions(methods="both", k_values="10..30", temperature=0.1)
>>> opts.methods, opts.k_values
(('nnk', 'knn'), (10, 20, 30))
>>> opts.as_dict()["temperature"]
0.1
>>> ScoringOptions(kernel="linear")
Traceback (most recent call last):
...
nnkcli.errors.OptionError: kernel: unknown kernel; choose one of cosine, gaussian (got 'linear')
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nnkcli.errors import InputError, OptionConflict, OptionError, SettingName
from nnkcli.evaluation.kspec import K_SPEC_HELP, KValues, check_k_values
from nnkcli.evaluation.protocols import PROTOCOLS, SOLVERS
from nnkcli.numerics.certified import SEARCH_KERNELS
from nnkcli.numerics.kernels import KERNELS
from nnkcli.numerics.scores import METHODS, TOP5_RULES, WEIGHTINGS
from nnkcli.settings import (
    Accepts,
    Settings,
    count,
    flag,
    open_unit_interval,
    optional_choice,
    optional_count,
    optional_path,
    positive_float,
    positive_floats,
    seed,
    setting,
)
from nnkcli.storage.checks import check_split_name

#: neighbor search back ends (``evaluation.search``/``evaluation.torch_backend``) and their devices;
#: the devices are also those of the model extractor (``extract --device``)
BACKENDS = ("faiss", "torch")
DEVICES = ("auto", "cpu", "cuda")
#: working memory of one query chunk (see ``evaluation.classification``)
CHUNK_MEMORY_BUDGET = 512 * 2**20
#: ``"both"`` on the command line means all of the classifiers (``METHODS``)
METHOD_ALIASES = {"both": METHODS}
METHOD_CHOICES = (*METHODS, *METHOD_ALIASES)
#: the default k of ``classify`` and the default --k of ``sweep``/``evaluate``
DEFAULT_K = 50
DEFAULT_K_SPEC = "10..200"
DEFAULT_ALPHA = 0.05  # sweep: a k is "tied" with the best when McNemar's p >= alpha
#: --select-on: where k (and T) may be chosen (never the query split)
SELECT_ON = ("train",)
DEFAULT_SELECT_QUERIES = 10_000
#: the settings a --protocol preset fills in when they are not given explicitly
PROTOCOL_FIELDS = ("k_values", "temperature", "temperature_grid", "top5_rule", "solver")


def check_methods(value, name: str | SettingName = "methods") -> tuple[str, ...]:
    """``"both"``/``"nnk"``/``"knn"`` or a sequence of them -> distinct tuple in the given order."""
    names = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for method in names:
        for part in METHOD_ALIASES.get(method, (method,)):
            if part not in METHODS:
                raise OptionError(name, method, f"unknown method; choose one of {', '.join(METHOD_CHOICES)}")
            if part not in out:
                out.append(part)
    if not out:
        raise OptionError(name, value, "no method given")
    return tuple(out)


def shard_spec(value, name) -> tuple[int, int] | None:
    """None (all queries) or the query shard ``"I/N"`` / ``(I, N)`` with ``0 <= I < N``."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", value)
        if not m:
            raise OptionError(name, value, "expected I/N", hint="e.g. --shard 0/8 (shards count from 0)")
        value = (int(m.group(1)), int(m.group(2)))
    try:
        i, n = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(name, value, "expected I/N or a pair of ints") from None
    if n < 1 or not 0 <= i < n:
        raise OptionError(name, f"{i}/{n}", "need 0 <= I < N", hint="shards count from 0: 0/8 ... 7/8")
    return (i, n)


def split_name(value, name) -> str:
    """A split name as the store accepts it (``storage.checks.check_split_name``)."""
    try:
        return check_split_name(value)
    except InputError as exc:
        raise OptionError(name, value, "invalid split name", hint=exc.hint) from None


@dataclass(frozen=True)
class ScoringOptions(Settings):
    """How the queries are scored: shared by ``classify``, ``sweep`` and ``evaluate``.

    Attributes
    ----------
    methods : tuple of {"nnk", "knn"}, default=("nnk", "knn")
        Accepts ``"both"``, one name or a sequence.
    k_values : tuple of int, default=(50,)
        Sorted, distinct; accepts an int, a k SPEC (``"10..200"``) or a list. Its Python
        parameter name is ``k`` (``classify(store, k=10)``, ``sweep(store, k="10..200")``).
    kernel : {"cosine", "gaussian"}, default="cosine"
        NNK kernel (``nnkcli.numerics.kernels``).
    temperature : float, default=0.07
        kNN weights ``exp(s / T)``, as DINO.
    weighting : {"exp", "similarity", "uniform"}, default="exp"
        kNN vote weights.
    exclude_self : bool, default=False
        Leave-one-out: skip each query's own row (the query split is the train split).
    chunk_size : int or None, default=None
        Queries per chunk; None sizes chunks to a memory budget.
    threads : int or None, default=None
        Worker threads of the whole pipeline (search, re-ranking, scoring); every
        native pool (faiss, BLAS, torch) is capped so that no more threads are busy.
        None = the cores this process may use (``os.sched_getaffinity``).
    tol : float, default=1e-8
        NNK KKT tolerance, relative to ``max|g|``.
    confidence : float, default=0.95
        Level of the interval reported with every accuracy, in (0, 1).
    alpha : float, default=0.05
        Level of sweep's paired test of each k against the best k, in (0, 1).
    backend : {"faiss", "torch"} or None, default=None
        Neighbor search: the faiss index, or a torch matmul + top-k
        (``nnkcli.evaluation.torch_backend``); None = torch when ``device`` resolves to CUDA.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where the torch backend searches; ``auto`` = CUDA when torch sees a GPU.
    fp16 : bool, default=False
        The torch backend multiplies in float16 (candidates re-ranked exactly in float64).
    search_kernel : {"auto", "fp32", "bf16"}, default="auto"
        The product of a flat index's search (``nnkcli.index_kernel.kernel_search``): float32, or
        bfloat16 candidates proved to hold the exact top k; both give the same neighbors.
        ``auto`` = bf16 where the CPU has bfloat16 instructions, oneMKL or torch is installed and
        the search is large (queries x rows x d per thread >= 2e10 with oneMKL, 3e11 with torch;
        ``nnkcli.index_flat.resolve_kernel``), else fp32.
    temperature_grid : tuple of float, default=()
        kNN temperatures evaluated from the same neighbors, one result row per (k, T);
        its first value is ``temperature``. Empty: just ``temperature``.
    top5_rule : {"strict", "inclusive"}, default="strict"
        ``strict``: a zero-score class never counts for top-5; ``inclusive``: every class is
        ranked (the peers' rule, ``nnkcli.numerics.scores.topk_classes``).
    solver : {"exact", "pruning"}, default="exact"
        NNK solver: the KKT-certified one, or the NNK paper's (``nnkcli.numerics.pruning``).
    protocol : str or None, default=None
        The preset (``nnkcli.evaluation.protocols``) the settings came from; recorded only:
        ``apply_protocol`` is what fills the settings in.
    select_on : {"train"} or None, default=None
        sweep/evaluate: choose k (and T) by leave-one-out on train rows.
    select_queries : int, default=10000
        Train rows of that leave-one-out selection (all rows when fewer).
    select_seed : int, default=0
        Seed of the selection's random subset.
    """

    methods: Accepts[str | Iterable[str], tuple[str, ...]] = setting(
        METHODS,
        check_methods,
        option="--method",
        choices=METHOD_CHOICES,
        shown="both",
        help="Which classifiers to run.",
    )
    k_values: Accepts[KValues, tuple[int, ...]] = setting(
        (DEFAULT_K,), check_k_values, python="k", option="--k", metavar="SPEC", help=f"k values: {K_SPEC_HELP}."
    )
    kernel: str = setting(
        "cosine",
        choices=KERNELS,
        what="kernel",
        help="NNK kernel: (1+cos)/2, or exp(-d^2/2s^2) with s = k-th neighbor distance / 3.",
    )
    temperature: float = setting(
        0.07,
        positive_float,
        metavar="T[,T...]",
        help="kNN weights exp(similarity / T), as DINO; T > 0. A list such as 0.02,0.05,0.07 "
        "gives one kNN result per T from the same neighbors (no new search).",
    )
    weighting: str = setting(
        "exp", choices=WEIGHTINGS, what="kNN weighting", help="kNN vote weights: exp(s/T) as DINO, s, or 1."
    )
    exclude_self: bool = setting(
        False, flag, help="Leave-one-out: skip each query's own row (query split = train split)."
    )
    chunk_size: int | None = setting(
        None,
        optional_count,
        type=int,
        metavar="N",
        help=f"Queries per scoring chunk (default: sized to a {CHUNK_MEMORY_BUDGET >> 20} "
        "MiB working-memory budget, less the compiled NNK engine's runtime when it runs, shared by the threads).",
    )
    threads: int | None = setting(
        None,
        optional_count,
        type=int,
        metavar="N",
        help="Threads for the whole run; caps faiss, BLAS and torch pools (default: the cores this process may use).",
    )
    tol: float = setting(1e-8, positive_float, option=None)
    confidence: float = setting(
        0.95,
        open_unit_interval,
        type=float,
        metavar="LEVEL",
        help="Level of the interval shown with every accuracy (Wilson; bootstrap for balanced).",
    )
    alpha: float = setting(
        DEFAULT_ALPHA,
        open_unit_interval,
        type=float,
        metavar="A",
        help="Significance level of the paired tests (McNemar): of each k against the best "
        "(sweep, evaluate), of B against A (compare).",
    )
    backend: str | None = setting(
        None,
        optional_choice(BACKENDS, "backend"),
        choices=BACKENDS,
        help="Neighbor search: faiss (the saved index) or torch (chunked matmul + top-k) "
        "[default: torch on CUDA, else faiss].",
    )
    device: str = setting(
        "auto",
        choices=DEVICES,
        what="device",
        help="Where torch runs: the torch search backend and the model's forward pass; "
        "auto = CUDA when torch sees a GPU.",
    )
    fp16: bool = setting(
        False,
        flag,
        help="Multiply in float16: the torch backend's search (re-ranked exactly) "
        "and the model's forward pass (CUDA only).",
    )
    search_kernel: str = setting(
        "auto",
        choices=SEARCH_KERNELS,
        what="search kernel",
        help="Product of the flat index's exact search: fp32, or bf16 (bfloat16 candidates proved to hold "
        "the exact top k; same results; needs oneMKL or torch and a CPU with bf16); auto = bf16 where it can run "
        "and the search is large (queries x rows x d per thread >= 2e10 with oneMKL, 3e11 with torch), else fp32.",
    )
    temperature_grid: Accepts[float | str | list[float] | tuple[float, ...], tuple[float, ...]] = setting(
        (), positive_floats, option="--temperature"
    )
    top5_rule: str = setting(
        "strict",
        choices=TOP5_RULES,
        what="top-5 rule",
        help="strict: a class with zero score never counts for top-5; inclusive: rank every "
        "class, as solo-learn, VISSL, DINOv2 and the NNK paper's code do.",
    )
    solver: str = setting(
        "exact",
        choices=SOLVERS,
        what="solver",
        help="NNK solver: exact (KKT-certified) or pruning (the NNK paper's code, to reproduce its "
        "tables; reports what the approximation costs).",
    )
    protocol: str | None = setting(
        None,
        optional_choice(PROTOCOLS, "protocol"),
        choices=tuple(PROTOCOLS),
        help="Preset k values, temperature, top-5 rule and solver of another tool (the docs' tutorial "
        '"Reproduce a peer\'s protocol"); options given explicitly override it.',
    )
    select_on: str | None = setting(
        None,
        optional_choice(SELECT_ON, "selection split"),
        choices=SELECT_ON,
        help="Choose k (and T) by leave-one-out top-1 on the train split, never the "
        'query split, and report the query split there ("selected"); the gates '
        "use it.",
    )
    select_queries: int = setting(
        DEFAULT_SELECT_QUERIES,
        count,
        type=int,
        metavar="N",
        help="Seeded random train rows the leave-one-out selection uses (all rows if fewer).",
    )
    select_seed: int = setting(0, seed, option=None)

    def validate(self):
        super().validate()
        if self.temperature_grid and self.temperature_grid[0] != self.temperature:
            # the grid's first value is the primary temperature (classify's --out, estimators)
            object.__setattr__(self, "temperature", self.temperature_grid[0])
        if len(self.temperature_grid) == 1:
            object.__setattr__(self, "temperature_grid", ())
        if self.solver == "pruning" and self.kernel != "cosine":
            raise OptionError(
                self.declared("solver").names,
                self.solver,
                "the pruning solver works with the cosine kernel only",
                hint="the NNK paper's code uses (1 + cos) / 2; drop --kernel gaussian",
            )
        return self

    @property
    def knn_temperatures(self) -> tuple[float, ...]:
        """Every kNN temperature evaluated, the primary (``temperature``) first."""
        return self.temperature_grid or (self.temperature,)


@dataclass(frozen=True)
class DataOptions(Settings):
    """Which splits of the store are evaluated, and with which saved index.

    ``exclude_self`` (a scoring option) needs ``query_split == train_split``; that is
    checked when the store is opened, with the data. ``shard = (I, N)`` evaluates only the
    I-th of N contiguous ranges of the query split (``nnkcli.evaluation.partials``).
    """

    train_split: str = setting(
        "train", split_name, metavar="NAME", help="Split searched for neighbors (the one 'nnk index' indexes)."
    )
    query_split: str = setting("val", split_name, metavar="NAME", help="Split whose rows are classified.")
    index_path: Accepts[str | os.PathLike[str] | None, str | None] = setting(
        None,
        optional_path,
        option="--index",
        help="Saved index (default: STORE's <stem>.<train-split>.faiss if present, else built in memory).",
    )
    rebuild_index: bool = setting(
        False, flag, help="Rebuild (and save) a stale or damaged saved index instead of refusing it."
    )
    shard: Accepts[str | Sequence[int] | None, tuple[int, int] | None] = setting(
        None,
        shard_spec,
        metavar="I/N",
        help="Evaluate only the I-th (from 0) of N contiguous ranges of the query "
        "split; needs --out PART.h5, see 'nnk merge'.",
    )
    strict_provenance: bool = setting(
        False,
        flag,
        help="Exit 1 when the train and query splits differ in provenance (model, "
        "checkpoint, transform, source format, dtype) instead of warning.",
    )


# -- the rules that tie settings together: each written once, an OptionConflict/OptionError (exit 2) --------
#: what a command that scores at one k says about several (message, hint)
ONE_K = {
    "classify": ("classify evaluates one k", "use 'nnk sweep' for several k"),
    "compare": ("compare takes one default k", "give each side its own k: --a knn@20 --b nnk@50"),
}


def one_k(value, name: str | SettingName = "k", command: str = "classify") -> tuple[int]:
    """``check_k_values`` for a command that scores at one k (``ONE_K``): exactly one k."""
    ks = check_k_values(value, name)
    if len(ks) != 1:
        what, hint = ONE_K[command]
        raise OptionError(name, value, what, hint=hint)
    return ks


def check_shard_output(shard, output, *, output_name: str) -> None:
    """A shard (``--shard``) needs a partial result file (``--out``): alone it is only a piece of a result.

    ``output_name`` is the output's Python parameter (``predictions_path``, ``partial_path``).
    """
    if shard is not None and output is None:
        raise OptionConflict(
            "{shard} needs {out}: a shard's results are only useful merged",
            {"shard": DataOptions.declared("shard").names, "out": SettingName(output_name, "--out")},
            hint="add --out part-I.h5, then 'nnk merge part-*.h5'",
        )


def keyword_fields(keywords: dict) -> dict:
    """``keywords`` of ``ScoringOptions``/``DataOptions`` keyed by field name (``k`` -> ``k_values``).

    Raises ``TypeError`` for an unknown keyword or a setting given under both its names.
    """
    scoring = {k: v for k, v in keywords.items() if k in ScoringOptions.keywords()}
    rest = {k: v for k, v in keywords.items() if k not in scoring}
    unknown = sorted(set(rest) - DataOptions.keywords())
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    return {**ScoringOptions.field_names(scoring), **DataOptions.field_names(rest)}


def apply_protocol(settings: dict, *, one_k: bool = False) -> dict:
    """``settings`` with every ``PROTOCOL_FIELDS`` entry it lacks taken from ``settings["protocol"]``.

    ``settings`` holds the explicitly given settings (explicit ones win; ``k`` or ``k_values``).
    ``temperature`` may be a sequence there (a grid). ``one_k``: classify's single k
    (``Protocol.classify_k``) instead of the sweep's list. Without a protocol only the
    temperature sequence is unfolded.
    """
    from nnkcli.evaluation.protocols import get_protocol

    out = keyword_fields(settings)
    t = out.get("temperature")
    if t is not None and not isinstance(t, (int, float)):
        temps = positive_floats(t, ScoringOptions.declared("temperature").names)
        out["temperature"] = temps[0]
        out["temperature_grid"] = temps if len(temps) > 1 else ()
    name = out.get("protocol")
    if name is None:
        return out
    preset = get_protocol(ScoringOptions.check_field("protocol", name))
    given = set(out)
    if "k_values" not in given:
        out["k_values"] = (preset.classify_k,) if one_k else preset.k_values
    if "temperature" not in given:
        out["temperature"] = preset.temperatures[0]
        out["temperature_grid"] = preset.temperatures if len(preset.temperatures) > 1 else ()
    out.setdefault("top5_rule", preset.top5_rule)
    out.setdefault("solver", preset.solver)
    return out


def resolve(
    options: ScoringOptions | None, data: DataOptions | None, keywords: dict
) -> tuple[ScoringOptions, DataOptions]:
    """The one path from keyword arguments to the options objects (``classify``/``sweep``).

    ``keywords`` may name any field of either object, by field name or Python parameter
    name (``k`` for ``k_values``: an int, a list or a SPEC string); they override
    ``options``/``data``.
    """
    keywords = keyword_fields(keywords)
    scoring_names = set(ScoringOptions.declarations())
    options = options if options is not None else ScoringOptions()
    data = data if data is not None else DataOptions()
    scoring_changes = {k: v for k, v in keywords.items() if k in scoring_names}
    data_changes = {k: v for k, v in keywords.items() if k not in scoring_names}
    if scoring_changes:
        options = options.replace(**scoring_changes)
    if data_changes:
        data = data.replace(**data_changes)
    return options, data


def resolve_one_k(
    options: ScoringOptions | None,
    data: DataOptions | None,
    keywords: dict,
    *,
    command: str,
    protocol: bool = False,
) -> tuple[ScoringOptions, DataOptions]:
    """``resolve`` for a command that scores at one k (``classify``, ``compare``: a key of ``ONE_K``).

    A preset (``protocol=True``) fills what is not given; with no options object and no
    k, the default k; then exactly one k must remain (``one_k``: an ``OptionError`` naming ``k``).
    """
    keywords = apply_protocol(keywords, one_k=True) if protocol else keyword_fields(keywords)
    if options is None and "k_values" not in keywords:
        keywords["k_values"] = (DEFAULT_K,)
    k_name = ScoringOptions.declared("k_values").names
    if "k_values" in keywords:
        one_k(keywords["k_values"], k_name, command)
    options, data = resolve(options, data, keywords)
    one_k(options.k_values, k_name, command)
    return options, data
