"""Do two splits come from the same feature extractor? (the provenance guard)

A query split extracted with another crop, another checkpoint or another model can drop
NNK from 57 % to 18 % while every command runs without complaint. Each split records
how it was made (``Split.attrs``, written by the importers and the torch extractor); a
difference in any of the fields below is reported by ``classify``, ``sweep`` and
``evaluate`` as a warning (stderr and the JSON ``"warnings"`` list), or refused with
``--strict-provenance`` (exit 1).
"""

from __future__ import annotations

import json

from nnkcli.errors import InputError

#: split attributes that describe the feature extractor (model spec, checkpoint, transform,
#: importer); the feature dtype is compared too
PROVENANCE_KEYS = (
    "model",
    "checkpoint_sha256",
    "transform",
    "resize",
    "crop",
    "interpolation",
    "mean",
    "std",
    "source_format",
    # nnk extract --protocol / --features / --layer (recorded only when not the defaults)
    "protocol",
    "features",
    "layer",
)


def _show(value) -> str:
    if value is None:
        return "(not recorded)"
    return value if isinstance(value, str) else json.dumps(value)


def provenance_differences(train, query) -> list[str]:
    """One line per provenance field in which the ``train`` and ``query`` splits differ.

    A field recorded for one split only counts as a difference (one split came from a
    model, the other from an array file); a field recorded for neither is ignored.
    """
    lines = []
    for key in PROVENANCE_KEYS:
        a, b = train.attrs.get(key), query.attrs.get(key)
        if a is None and b is None:
            continue
        if a != b:
            lines.append(f"{key}: {_show(a)} vs {_show(b)}")
    if str(train.dtype) != str(query.dtype):
        lines.append(f"feature dtype: {train.dtype} vs {query.dtype}")
    return lines


def check_provenance(train, query, *, strict: bool = False) -> list[str]:
    """The warnings for ``train`` vs ``query`` (empty when they agree); an InputError if ``strict``."""
    diffs = provenance_differences(train, query)
    if not diffs:
        return []
    text = f"train split '{train.name}' and query split '{query.name}' differ in provenance: " + "; ".join(diffs)
    if strict:
        raise InputError(
            text, hint="extract both splits with the same model, checkpoint and transform, or drop --strict-provenance"
        )
    return [text]
