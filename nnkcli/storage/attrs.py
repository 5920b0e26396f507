"""HDF5 attribute values to and from plain Python: the one conversion every nnkcli file uses.

h5py hands attributes back as numpy scalars, bytes or arrays, and accepts only scalars
and arrays; nnkcli stores anything else (lists, dicts) as a JSON string.
"""

from __future__ import annotations

import json

import numpy as np


def to_attr(value):
    """A value ready for ``h5py``'s ``attrs[key] = ...``: a scalar, or JSON text for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (str, int, float, bool)):
        value = json.dumps(value, sort_keys=True, default=str)
    return value


def from_attr(value, *, decode_json: bool = True):
    """A stored attribute as plain Python (str, int, float, bool, list, dict).

    ``decode_json``: strings that hold a JSON list or object (what :func:`to_attr` wrote)
    are decoded; a string that only looks like one stays a string.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [from_attr(v, decode_json=decode_json) for v in value.tolist()]
    if decode_json and isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value
