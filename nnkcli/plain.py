"""Plain JSON values: numpy scalars and arrays, NaN/inf, bytes and paths converted.

Used by the result documents of the CLI (``output.py``) and by the history lines of the
core (``tracking``); it imports nothing.
"""

from __future__ import annotations

import math
from typing import Any


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and NaN/inf into plain JSON values (NaN -> null).

    >>> import numpy as np
    >>> jsonable({"a": np.float32(0.5), "b": [float("nan"), np.arange(2)]})
    {'a': 0.5, 'b': [None, [0, 1]]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if hasattr(value, "__fspath__"):
        return str(value)
    return value
