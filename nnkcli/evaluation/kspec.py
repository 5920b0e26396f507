"""The k specification grammar: ``--k 10..200``, ``k="1,5,10..200:10"``, ``k=[10, 20]``.

One grammar for every command and Python function that takes k values; the checks raise
``OptionError`` naming the setting (``k`` in Python, ``--k`` on the command line).
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterable
from typing import SupportsIndex, TypeAlias

from nnkcli.errors import OptionError, SettingName

#: the most k values one specification may produce
MAX_K_VALUES = 10_000
#: what ``check_k_values`` accepts: one k (numpy ints too), a k SPEC, or the ks
KValues: TypeAlias = "SupportsIndex | str | Iterable[SupportsIndex]"
K_SPEC_HELP = "N, A..B (multiples of A up to B), A..B:S (step S), or comma lists such as 1,5,10..200:10"

_RANGE = re.compile(r"^(\d+)\.\.(\d+)(?::(\d+))?$")
_INT = re.compile(r"^\d+$")


def parse_k_spec(spec: str, name: str | SettingName = "k") -> list[int]:
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
        raise OptionError(name, spec, "empty k specification", hint="e.g. --k 10..200 or --k 10,20,50")
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
                raise OptionError(
                    name,
                    spec,
                    f"bad k range {token!r}: need 1 <= A <= B and a step >= 1",
                    hint="e.g. 10..200 (10, 20, ..., 200) or 1..100:5",
                )
            if (b - a) // step + 1 > MAX_K_VALUES:
                raise OptionError(
                    name, spec, f"k range {token!r} has more than {MAX_K_VALUES} values", hint="use a larger step"
                )
            new = list(range(a, b + 1, step))
        else:
            raise OptionError(name, spec, f"bad k token {token!r}", hint=f"use {K_SPEC_HELP}")
        if any(v < 1 for v in new):
            raise OptionError(name, spec, f"bad k token {token!r}: k must be >= 1")
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
        if all(b - a == step for a, b in itertools.pairwise(ks)):
            return f"{ks[0]}..{ks[-1]}" if step == ks[0] else f"{ks[0]}..{ks[-1]}:{step}"
    return ",".join(str(k) for k in ks)


def check_k_values(value, name: str | SettingName = "k") -> tuple[int, ...]:
    """An int, a k SPEC string or an iterable of ints -> sorted distinct tuple, every k >= 1."""
    if isinstance(value, str):
        return tuple(parse_k_spec(value, name))
    try:
        items = [operator.index(value)]  # one int (numpy ints too)
    except TypeError:
        try:
            items = list(value)
        except TypeError:
            raise OptionError(name, value, "expected an int, a k SPEC or a list of ints") from None
    out: set[int] = set()
    for k in items:
        if isinstance(k, bool):
            raise OptionError(name, value, "every k must be an integer")
        try:
            k = operator.index(k)
        except TypeError:
            raise OptionError(name, value, "every k must be an integer") from None
        if k < 1:
            raise OptionError(name, value, "k must be >= 1")
        out.add(k)
    if not out:
        raise OptionError(name, value, "no k values", hint="e.g. --k 10..200")
    return tuple(sorted(out))
