"""Settings declared once: a frozen dataclass whose fields carry everything about a setting.

Each field says, in one place, its default, its Python parameter name, its command-line
option, its check (which normalises the value or raises ``OptionError``), its allowed
values, its help text and its metavar::

    @dataclass(frozen=True)
    class IndexParams(Settings):
        hnsw_m: int = setting(32, at_least(2), option="--hnsw-m", metavar="N", help="hnsw: graph degree.")

A ``Settings`` object checks every field on construction, so an invalid one cannot exist.
The command line builds its options from the same declarations (``nnkcli.commands._options``):
no default, choice list or help text is written a second time. A bad value names the Python
parameter when it comes from a Python call (``k: k must be >= 1 (got 0)``) and the option
when the command line reports it (``Invalid value for '--k'``): the check receives the
setting's two names (``SettingName``) and the error carries both.

This module is the core's (no click): ``nnkcli.index`` and ``nnkcli.evaluation`` use it.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(Settings):
...     colour: str = setting("red", choices=("red", "blue"), what="colour", help="Ink.")
...     size: int = setting(1, at_least(1), python="n", option="--size")
>>> Demo(colour="blue").replace(n=3).as_dict()
{'colour': 'blue', 'size': 3}
>>> Demo(size=0)
Traceback (most recent call last):
...
nnkcli.errors.OptionError: n: must be >= 1 (got 0)
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from nnkcli.errors import OptionError, SettingName

#: a check: ``check(value, name)`` -> the normalised value, or ``OptionError(name, value, reason)``
Check = Callable[[Any, Any], Any]

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Accepts(Generic[_In, _Out]):
    """The annotation of a setting whose check takes more than it stores: ``Accepts[In, Out]``.

    ``k_values: Accepts[int | str | Iterable[int], tuple[int, ...]]`` is given as an int, a
    SPEC or a list and read as the tuple its check made. Only the type checker reads it, as a
    descriptor: ``__set__`` types the constructor's parameter, ``__get__`` the attribute. At
    run time the field holds the plain normalised value.
    """

    if TYPE_CHECKING:

        def __get__(self, obj: object, owner: Any = None) -> _Out: ...

        def __set__(self, obj: object, value: _In) -> None: ...


@dataclass(frozen=True)
class Declared:
    """One setting's declaration (what ``setting`` records on a field).

    ``shown`` is the default as the command line spells it (``"both"`` for every method),
    when that differs from the Python default; ``type`` is what the command line parses
    the text into before the check (``int``, ``float``; text otherwise).
    """

    name: str
    python: str
    option: str | None
    default: Any
    check: Check
    choices: tuple | None
    help: str
    metavar: str | None
    type: type | None
    shown: Any

    @property
    def names(self) -> SettingName:
        return SettingName(self.python, self.option or self.python)

    @property
    def cli_default(self):
        return self.shown if self.shown is not None else self.default

    @property
    def is_flag(self) -> bool:
        return self.default is False


def setting(
    default,
    check: Check | None = None,
    *,
    option: str | None = "",
    python: str | None = None,
    choices: Iterable | None = None,
    what: str | None = None,
    help: str = "",
    metavar: str | None = None,
    type: type | None = None,
    shown=None,
):
    """A dataclass field carrying its declaration.

    ``option=""`` (the default) derives the option from the field name (``chunk_size`` ->
    ``--chunk-size``); ``None`` means the setting has no command-line option. ``choices``
    without a ``check`` makes the check ``choice(choices, what)``.
    """
    choices = tuple(choices) if choices is not None else None
    if check is None:
        if choices is None:
            raise TypeError("a setting needs a check or its choices")
        check = choice(choices, what or "value")
    return dataclasses.field(
        default=default, metadata={"setting": (option, python, check, choices, help, metavar, type, shown)}
    )


_DECLARATIONS: dict[type, dict[str, Declared]] = {}

_S = TypeVar("_S", bound="Settings")


class Settings:
    """Frozen dataclasses of declared settings: checked and normalised on construction."""

    # every subclass is a dataclass: declaring its field table lets the dataclasses functions accept it
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Check and normalise every field; raises ``OptionError`` naming the first bad one."""
        for d in self.declarations().values():
            object.__setattr__(self, d.name, d.check(getattr(self, d.name), d.names))
        return self

    @classmethod
    def declarations(cls) -> dict[str, Declared]:
        """field name -> its ``Declared``, in field order."""
        if cls in _DECLARATIONS:
            return _DECLARATIONS[cls]
        out = {}
        for f in dataclasses.fields(cls):
            if "setting" not in f.metadata:
                continue
            option, python, check, choices, help, metavar, type_, shown = f.metadata["setting"]
            if option == "":
                option = "--" + f.name.replace("_", "-")
            out[f.name] = Declared(
                f.name, python or f.name, option, f.default, check, choices, help, metavar, type_, shown
            )
        _DECLARATIONS[cls] = out
        return out

    @classmethod
    def declared(cls, name: str) -> Declared:
        return cls.declarations()[name]

    @classmethod
    def keywords(cls) -> set[str]:
        """Every name a setting may be given by: the field names and the Python parameter names."""
        return {f.name for f in dataclasses.fields(cls)} | {d.python for d in cls.declarations().values()}

    @classmethod
    def field_names(cls, changes: dict) -> dict:
        """``changes`` keyed by field name: a Python parameter name (``k``) becomes its field's (``k_values``).

        Raises ``TypeError`` for a name that is neither, or a setting given under both names.
        """
        decl = cls.declarations()
        by_python = {d.python: d.name for d in decl.values()}
        names = {f.name for f in dataclasses.fields(cls)}
        out: dict = {}
        for key, value in changes.items():
            name = key if key in names else by_python.get(key)
            if name is None:
                raise TypeError(
                    f"{cls.__name__} has no setting {key}; the settings are: {', '.join(sorted(cls.keywords()))}"
                )
            if name in out:
                raise TypeError(f"{name} given twice (as {decl[name].python} and as {name})")
            out[name] = value
        return out

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with ``changes`` (field or Python parameter names) applied and checked."""
        return dataclasses.replace(self, **self.field_names(changes))

    def as_dict(self) -> dict:
        """Every field, JSON-able (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """field name -> command-line option name (the settings that have one)."""
        return {d.name: d.option for d in cls.declarations().values() if d.option}

    @classmethod
    def check_field(cls, name: str, value, names: SettingName | None = None):
        """Run one field's check; the error names ``names`` (default: the field's own two names)."""
        d = cls.declared(name)
        return d.check(value, names or d.names)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# -- checks: each takes (value, name) and returns the value normalised, or raises OptionError ---------
def choice(allowed: Iterable, what: str) -> Check:
    """A check that the value is one of ``allowed``."""
    allowed = tuple(allowed)

    def check(value, name):
        if value not in allowed:
            raise OptionError(name, value, f"unknown {what}; choose one of {', '.join(map(str, allowed))}")
        return value

    return check


def optional(check: Check) -> Check:
    """None (= automatic) or what ``check`` accepts."""
    return lambda value, name: None if value is None else check(value, name)


def optional_choice(allowed: Iterable, what: str) -> Check:
    """None (= automatic) or one of ``allowed``."""
    return optional(choice(allowed, what))


def at_least(minimum: int) -> Check:
    """An int >= ``minimum`` (numpy ints too; never a bool or a float)."""

    def check(value, name):
        if isinstance(value, bool):
            raise OptionError(name, value, f"expected an integer >= {minimum}")
        try:
            value = operator.index(value)
        except TypeError:
            raise OptionError(name, value, f"expected an integer >= {minimum}") from None
        if value < minimum:
            raise OptionError(name, value, f"must be >= {minimum}")
        return value

    return check


count = at_least(1)
optional_count = optional(count)
seed = at_least(0)


def positive_float(value, name) -> float:
    """A finite float > 0."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(name, value, "expected a number") from None
    if not (math.isfinite(x) and x > 0):
        raise OptionError(name, value, "must be a finite number > 0")
    return x


def open_unit_interval(value, name) -> float:
    """A float strictly between 0 and 1 (NaN is not)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(name, value, "expected a number") from None
    if not 0.0 < x < 1.0:  # also False for NaN
        raise OptionError(name, value, "must be strictly between 0 and 1")
    return x


def positive_floats(value, name) -> tuple[float, ...]:
    """A float, a comma list (``"0.02,0.05"``) or a sequence -> tuple of distinct finite floats > 0, in order.

    The empty tuple stays empty (no grid).
    """
    if isinstance(value, str):
        parts = []
        for part in value.split(","):
            try:
                parts.append(float(part))
            except ValueError:
                raise OptionError(
                    name, value, "expected a number or a comma list of numbers", hint="e.g. 0.07 or 0.02,0.05,0.07"
                ) from None
        value = parts
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(dict.fromkeys(positive_float(v, name) for v in value))


def flag(value, name) -> bool:
    if not isinstance(value, bool):
        raise OptionError(name, value, "expected True or False")
    return value


def optional_path(value, name) -> str | None:
    return None if value is None else str(value)
