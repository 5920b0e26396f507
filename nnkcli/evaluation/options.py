"""How queries are scored: one frozen options object, its allowed values and its checks.

``ScoringOptions`` is built once (by the CLI's option bundle, or by ``classify``/``sweep``
from keyword arguments), validated once on construction, passed whole to the core and
recorded whole (``as_dict()``) as ``"parameters"`` in every JSON document, predictions
file and history line. ``DataOptions`` says which splits and index one evaluation uses.

Every field is declared on one line with its command-line name and its check::

    temperature: float = setting(0.07, "--temperature", positive_float)

The check normalises the value (``"both"`` -> ``("nnk", "knn")``, ``"10..30"`` ->
``(10, 20, 30)``) and raises ``OptionError`` (a usage error, exit 2) naming the option
and the value. The CLI runs the very same check while parsing (``commands/_options.py``),
so an allowed-value list or a range exists once, here (``KERNELS`` and ``WEIGHTINGS``
are owned by the numerics that implement them). To add a setting: one field line here
(with a check), one ``click.option`` line in the bundle, a test and a README line.

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
nnkcli.errors.OptionError: --kernel: unknown kernel; choose one of cosine, gaussian (got 'linear')
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nnkcli.errors import InputError, OptionError
from nnkcli.storage.checks import check_split_name
from nnkcli.evaluation.protocols import PROTOCOLS, SOLVERS
from nnkcli.numerics.kernels import KERNELS
from nnkcli.numerics.scores import METHODS, TOP5_RULES, WEIGHTINGS

#: neighbor search back ends (``evaluation.search``/``evaluation.torch_backend``) and their devices;
#: the devices are also those of the model extractor (``extract --device``)
BACKENDS = ("faiss", "torch")
DEVICES = ("auto", "cpu", "cuda")
#: working memory of one query chunk (see ``evaluation.classification``)
CHUNK_MEMORY_BUDGET = 512 * 2**20
#: ``"both"`` on the command line means all of the classifiers (``METHODS``)
METHOD_ALIASES = {"both": METHODS}
#: the default k of ``classify`` and the default --k of ``sweep``/``evaluate``
DEFAULT_K = 50
DEFAULT_K_SPEC = "10..200"
DEFAULT_ALPHA = 0.05  # sweep: a k is "tied" with the best when McNemar's p >= alpha
MAX_K_VALUES = 10_000
K_SPEC_HELP = "N, A..B (multiples of A up to B), A..B:S (step S), or comma lists such as 1,5,10..200:10"

_RANGE = re.compile(r"^(\d+)\.\.(\d+)(?::(\d+))?$")
_INT = re.compile(r"^\d+$")


# -- checks: each takes the value, returns it normalised, or raises OptionError ----------------
def parse_k_spec(spec: str, option: str = "--k") -> list[int]:
    """Parse a k specification into a sorted list of distinct positive ints.

    Grammar (comma-separated tokens, mixed freely)::

        N         one value
        A..B      A, 2A, 3A, ... up to B       ("10..200" -> 10, 20, ..., 200)
        A..B:S    A, A+S, A+2S, ... up to B    ("1..9:4" -> 1, 5, 9)

    Raises
    ------
    OptionError
        naming the first bad token.

    Examples
    --------
    >>> parse_k_spec("1,5,10..30:10")
    [1, 5, 10, 20, 30]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(option, spec, "empty k specification", hint="e.g. --k 10..200 or --k 10,20,50")
    values: set[int] = set()
    for raw in spec.split(","):
        token = raw.strip()
        m = _RANGE.match(token)
        if _INT.match(token):
            new = [int(token)]
        elif m:
            a, b = int(m.group(1)), int(m.group(2))
            step = int(m.group(3)) if m.group(3) is not None else a
            if a < 1 or step < 1 or b < a:
                raise OptionError(option, spec, f"bad k range {token!r}: need 1 <= A <= B and a step >= 1",
                                  hint="e.g. 10..200 (10, 20, ..., 200) or 1..100:5")
            if (b - a) // step + 1 > MAX_K_VALUES:
                raise OptionError(option, spec, f"k range {token!r} has more than {MAX_K_VALUES} values",
                                  hint="use a larger step")
            new = list(range(a, b + 1, step))
        else:
            raise OptionError(option, spec, f"bad k token {token!r}", hint=f"use {K_SPEC_HELP}")
        if any(v < 1 for v in new):
            raise OptionError(option, spec, f"bad k token {token!r}: k must be >= 1")
        values.update(new)
    return sorted(values)


def format_k_spec(k_values) -> str:
    """The shortest SPEC of the grammar above for sorted distinct ``k_values`` (inverse of ``parse_k_spec``).

    >>> format_k_spec([10, 20, 30]), format_k_spec([1, 5, 9]), format_k_spec([3, 7, 50])
    ('10..30', '1..9:4', '3,7,50')
    """
    ks = list(k_values)
    if len(ks) > 2:
        step = ks[1] - ks[0]
        if all(b - a == step for a, b in zip(ks, ks[1:])):
            return f"{ks[0]}..{ks[-1]}" if step == ks[0] else f"{ks[0]}..{ks[-1]}:{step}"
    return ",".join(str(k) for k in ks)


def check_k_values(value, option: str = "--k") -> tuple[int, ...]:
    """An int, a k SPEC string or an iterable of ints -> sorted distinct tuple, every k >= 1."""
    if isinstance(value, str):
        return tuple(parse_k_spec(value, option))
    try:
        items = [operator.index(value)]  # one int (numpy ints too)
    except TypeError:
        try:
            items = list(value)
        except TypeError:
            raise OptionError(option, value, "expected an int, a k SPEC or a list of ints") from None
    out: set[int] = set()
    for k in items:
        if isinstance(k, bool):
            raise OptionError(option, value, "every k must be an integer")
        try:
            k = operator.index(k)
        except TypeError:
            raise OptionError(option, value, "every k must be an integer") from None
        if k < 1:
            raise OptionError(option, value, f"k must be >= 1, got {k}")
        out.add(k)
    if not out:
        raise OptionError(option, value, "no k values", hint="e.g. --k 10..200")
    return tuple(sorted(out))


def check_methods(value, option: str = "--method") -> tuple[str, ...]:
    """``"both"``/``"nnk"``/``"knn"`` or a sequence of them -> distinct tuple in the given order."""
    names = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for name in names:
        for part in METHOD_ALIASES.get(name, (name,)):
            if part not in METHODS:
                raise OptionError(option, name, f"unknown method; choose one of {', '.join(METHOD_CHOICES)}")
            if part not in out:
                out.append(part)
    if not out:
        raise OptionError(option, value, "no method given")
    return tuple(out)


def choice(allowed: Iterable[str], what: str) -> Callable[[Any, str], str]:
    """A check that the value is one of ``allowed``."""
    allowed = tuple(allowed)

    def check(value, option):
        if value not in allowed:
            raise OptionError(option, value, f"unknown {what}; choose one of {', '.join(allowed)}")
        return value

    return check


def optional_choice(allowed: Iterable[str], what: str) -> Callable[[Any, str], str | None]:
    """None (= automatic) or one of ``allowed``."""
    check_one = choice(allowed, what)
    return lambda value, option: None if value is None else check_one(value, option)


def shard_spec(value, option: str) -> tuple[int, int] | None:
    """None (all queries) or the query shard ``"I/N"`` / ``(I, N)`` with ``0 <= I < N``."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", value)
        if not m:
            raise OptionError(option, value, "expected I/N", hint="e.g. --shard 0/8 (shards count from 0)")
        value = (int(m.group(1)), int(m.group(2)))
    try:
        i, n = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "expected I/N or a pair of ints") from None
    if n < 1 or not 0 <= i < n:
        raise OptionError(option, f"{i}/{n}", "need 0 <= I < N", hint="shards count from 0: 0/8 ... 7/8")
    return (i, n)


def positive_float(value, option: str) -> float:
    """A finite float > 0."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "expected a number") from None
    if not (math.isfinite(x) and x > 0):
        raise OptionError(option, value, "must be a finite number > 0")
    return x


def open_unit_interval(value, option: str) -> float:
    """A float strictly between 0 and 1 (NaN is not)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "expected a number") from None
    if not 0.0 < x < 1.0:  # also False for NaN
        raise OptionError(option, value, "must be strictly between 0 and 1")
    return x


def positive_floats(value, option: str) -> tuple[float, ...]:
    """A float, a comma list (``"0.02,0.05"``) or a sequence -> tuple of distinct finite floats > 0, in order.

    The empty tuple stays empty (no grid).
    """
    if isinstance(value, str):
        parts = []
        for part in value.split(","):
            try:
                parts.append(float(part))
            except ValueError:
                raise OptionError(option, value, "expected a number or a comma list of numbers",
                                  hint="e.g. 0.07 or 0.02,0.05,0.07") from None
        value = parts
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(dict.fromkeys(positive_float(v, option) for v in value))


def count(value, option: str) -> int:
    """An int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(option, value, "expected an integer >= 1")
    return value


def seed(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(option, value, "expected an integer >= 0")
    return value


def optional_count(value, option: str) -> int | None:
    """None (= automatic) or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(option, value, "expected an integer >= 1")
    if value < 1:
        raise OptionError(option, value, "must be >= 1")
    return value


def flag(value, option: str) -> bool:
    if not isinstance(value, bool):
        raise OptionError(option, value, "expected True or False")
    return value


def split_name(value, option: str) -> str:
    """A split name as the store accepts it (``storage.checks.check_split_name``)."""
    try:
        return check_split_name(value)
    except InputError as exc:
        raise OptionError(option, value, "invalid split name", hint=exc.hint) from None


def optional_path(value, option: str) -> str | None:
    return None if value is None else str(value)


METHOD_CHOICES = (*METHODS, *METHOD_ALIASES)
#: --select-on: where k (and T) may be chosen (never the query split)
SELECT_ON = ("train",)
DEFAULT_SELECT_QUERIES = 10_000
#: the settings a --protocol preset fills in when they are not given explicitly
PROTOCOL_FIELDS = ("k_values", "temperature", "temperature_grid", "top5_rule", "solver")


def setting(default, option: str, check: Callable[[Any, str], Any]):
    """A dataclass field with its command-line name and its check (see the module docstring)."""
    return dataclasses.field(default=default, metadata={"option": option, "check": check})


class _Checked:
    """Frozen dataclasses whose fields carry a check: normalised and validated on construction."""

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Check and normalise every field; raises ``OptionError`` naming the first bad one."""
        for f in dataclasses.fields(self):
            meta = f.metadata
            if "check" in meta:
                object.__setattr__(self, f.name, meta["check"](getattr(self, f.name), meta["option"]))
        return self

    def replace(self, **changes):
        """A copy with ``changes`` applied (and validated); unknown names raise TypeError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(unknown)}; "
                            f"the settings are: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Every field, JSON-able (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """field name -> command-line option name."""
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}

    @classmethod
    def check_field(cls, name: str, value):
        """Run one field's check (what the CLI calls while parsing that option)."""
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        return f.metadata["check"](value, f.metadata["option"])


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ScoringOptions(_Checked):
    """How the queries are scored: shared by ``classify``, ``sweep`` and ``evaluate``.

    Attributes
    ----------
    methods : tuple of {"nnk", "knn"}, default=("nnk", "knn")
        Accepts ``"both"``, one name or a sequence.
    k_values : tuple of int, default=(50,)
        Sorted, distinct; accepts an int, a k SPEC (``"10..200"``) or a list.
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

    methods: tuple[str, ...] = setting(METHODS, "--method", check_methods)
    k_values: tuple[int, ...] = setting((DEFAULT_K,), "--k", check_k_values)
    kernel: str = setting("cosine", "--kernel", choice(KERNELS, "kernel"))
    temperature: float = setting(0.07, "--temperature", positive_float)
    weighting: str = setting("exp", "--weighting", choice(WEIGHTINGS, "kNN weighting"))
    exclude_self: bool = setting(False, "--exclude-self", flag)
    chunk_size: int | None = setting(None, "--chunk-size", optional_count)
    threads: int | None = setting(None, "--threads", optional_count)
    tol: float = setting(1e-8, "tol", positive_float)
    confidence: float = setting(0.95, "--confidence", open_unit_interval)
    alpha: float = setting(DEFAULT_ALPHA, "--alpha", open_unit_interval)
    backend: str | None = setting(None, "--backend", optional_choice(BACKENDS, "backend"))
    device: str = setting("auto", "--device", choice(DEVICES, "device"))
    fp16: bool = setting(False, "--fp16", flag)
    temperature_grid: tuple[float, ...] = setting((), "--temperature", positive_floats)
    top5_rule: str = setting("strict", "--top5-rule", choice(TOP5_RULES, "top-5 rule"))
    solver: str = setting("exact", "--solver", choice(SOLVERS, "solver"))
    protocol: str | None = setting(None, "--protocol", optional_choice(PROTOCOLS, "protocol"))
    select_on: str | None = setting(None, "--select-on", optional_choice(SELECT_ON, "selection split"))
    select_queries: int = setting(DEFAULT_SELECT_QUERIES, "--select-queries", count)
    select_seed: int = setting(0, "select_seed", seed)

    def validate(self):
        super().validate()
        if self.temperature_grid and self.temperature_grid[0] != self.temperature:
            # the grid's first value is the primary temperature (classify's --out, estimators)
            object.__setattr__(self, "temperature", self.temperature_grid[0])
        if len(self.temperature_grid) == 1:
            object.__setattr__(self, "temperature_grid", ())
        if self.solver == "pruning" and self.kernel != "cosine":
            raise OptionError("--solver", self.solver, "the pruning solver works with the cosine kernel only",
                              hint="the NNK paper's code uses (1 + cos) / 2; drop --kernel gaussian")
        return self

    @property
    def knn_temperatures(self) -> tuple[float, ...]:
        """Every kNN temperature evaluated, the primary (``temperature``) first."""
        return self.temperature_grid or (self.temperature,)


@dataclass(frozen=True)
class DataOptions(_Checked):
    """Which splits of the store are evaluated, and with which saved index.

    ``exclude_self`` (a scoring option) needs ``query_split == train_split``; that is
    checked when the store is opened, with the data. ``shard = (I, N)`` evaluates only the
    I-th of N contiguous ranges of the query split (``nnkcli.evaluation.partials``).
    """

    train_split: str = setting("train", "--train-split", split_name)
    query_split: str = setting("val", "--query-split", split_name)
    index_path: str | None = setting(None, "--index", optional_path)
    rebuild_index: bool = setting(False, "--rebuild-index", flag)
    shard: tuple[int, int] | None = setting(None, "--shard", shard_spec)
    strict_provenance: bool = setting(False, "--strict-provenance", flag)


def apply_protocol(settings: dict, *, one_k: bool = False) -> dict:
    """``settings`` with every ``PROTOCOL_FIELDS`` entry it lacks taken from ``settings["protocol"]``.

    ``settings`` holds the explicitly given settings (explicit ones win). ``temperature``
    may be a sequence there (a grid). ``one_k``: classify's single k (``Protocol.classify_k``)
    instead of the sweep's list. Without a protocol only the temperature sequence is unfolded.
    """
    from nnkcli.evaluation.protocols import get_protocol

    out = dict(settings)
    t = out.get("temperature")
    if t is not None and not isinstance(t, (int, float)):
        temps = positive_floats(t, "--temperature")
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

    ``keywords`` may name any field of either object; they override ``options``/``data``.
    """
    scoring_names = {f.name for f in dataclasses.fields(ScoringOptions)}
    data_names = {f.name for f in dataclasses.fields(DataOptions)}
    unknown = sorted(set(keywords) - scoring_names - data_names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    options = options if options is not None else ScoringOptions()
    data = data if data is not None else DataOptions()
    scoring_changes = {k: v for k, v in keywords.items() if k in scoring_names}
    data_changes = {k: v for k, v in keywords.items() if k in data_names}
    if scoring_changes:
        options = options.replace(**scoring_changes)
    if data_changes:
        data = data.replace(**data_changes)
    return options, data


def resolve_one_k(
    options: ScoringOptions | None, data: DataOptions | None, keywords: dict, *, what: str, hint: str,
    protocol: bool = False,
) -> tuple[ScoringOptions, DataOptions]:
    """``resolve`` for a command that scores at one k (``classify``, ``compare``).

    A preset (``protocol=True``) fills what is not given; with no options object and no
    k, the default k; then exactly one k must remain, else ``InputError("<what>, got N
    values")`` with ``hint``.
    """
    if protocol:
        keywords = apply_protocol(keywords, one_k=True)
    if options is None and "k_values" not in keywords:
        keywords["k_values"] = (DEFAULT_K,)
    options, data = resolve(options, data, keywords)
    if len(options.k_values) != 1:
        raise InputError(f"{what}, got {len(options.k_values)} values", hint=hint)
    return options, data
