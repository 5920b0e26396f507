"""Matching a checkpoint's keys to a model's: prefixes, layouts, and what is missing or left over.

Training scripts save the backbone under prefixes (``module.``, ``backbone.``,
``module.base_encoder.``) or in another naming (DINOv2's ``register_tokens``, lightly's
``nn.Sequential(*list(resnet.children())[:-1])`` whose keys are child positions). Each
candidate reading of the checkpoint -- as saved, through the architecture's own converter
(timm's ``checkpoint_filter_fn``), or by child position -- is scored by how many of the
model's tensors it provides; the best one is loaded, and what it lacks is named.

torch is not imported here: states are plain mappings of names to tensors.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger("nnkcli")

#: Prefix words of momentum/key encoders: when several prefixes fit the model
#: equally well, the query/online encoder is preferred over these. ``student``: DINO,
#: iBOT and DINOv2 evaluate the teacher (DINO's ``eval_knn.py --checkpoint_key teacher``),
#: so in a checkpoint holding both under one dict the teacher wins.
_DISFAVOURED_PREFIX_WORDS = ("encoder_k", "momentum", "key_encoder", "target", "ema", "student")

#: BatchNorm's batch counter does not affect evaluation, and checkpoints written
#: before torch 0.4.1 lack it.
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)

#: A converter maps a checkpoint state (prefixes removed) to the model's naming.
Converter = Callable[[dict, object], dict]


def detect_prefix(checkpoint_keys: Sequence[str], model_keys: Sequence[str]) -> str:
    """The key prefix whose removal makes the most checkpoint keys match the model.

    Every split of a checkpoint key at a ``.`` whose remainder is a model key votes
    for the part before it; ``""`` (nothing to strip) wins ties, then prefixes of the
    online/query encoder over momentum/key encoders, then the shorter. Data-driven,
    so ``module.``, ``backbone.``, ``module.encoder_q.``, ``trunk._feature_blocks.``
    and combinations are all found.
    """
    wanted = set(model_keys)
    votes: Counter[str] = Counter()
    for key in checkpoint_keys:
        if key in wanted:
            votes[""] += 1
        start = key.find(".")
        while start != -1:
            if key[start + 1 :] in wanted:
                votes[key[: start + 1]] += 1
            start = key.find(".", start + 1)
    if not votes:
        return ""
    best = max(votes.values())
    tied = [p for p, n in votes.items() if n == best]
    if "" in tied:
        return ""
    tied.sort(key=lambda p: (any(w in p for w in _DISFAVOURED_PREFIX_WORDS), len(p), p))
    if len(tied) > 1:
        logger.info(
            "checkpoint: keys fit the model equally well under prefixes %s; using %r (choose with --strip-prefix)",
            ", ".join(repr(p) for p in tied),
            tied[0],
        )
    return tied[0]


def strip_prefixes(state_dict: Mapping, prefixes: Sequence[str]) -> tuple[dict, dict[str, int]]:
    """Remove each prefix, in order, from the keys that start with it.

    Returns the new dict and, per prefix, how many keys lost it. Keys that do not
    start with a prefix are kept unchanged (they end up as unexpected keys).
    """
    out = dict(state_dict)
    counts: dict[str, int] = {}
    for prefix in prefixes:
        if not prefix:
            continue
        renamed, n = {}, 0
        for k, v in out.items():
            if k.startswith(prefix):
                renamed[k[len(prefix) :]] = v
                n += 1
            elif k not in renamed:
                renamed[k] = v
        out, counts[prefix] = renamed, n
    return out, counts


def summarize_keys(keys: Sequence[str], limit: int = 6) -> str:
    """``head.* (6), fc.* (2)``: keys grouped by their first component, largest first."""
    groups = Counter(k.split(".", 1)[0] + (".*" if "." in k else "") for k in keys)
    parts = [f"{g} ({n})" if n > 1 else g for g, n in groups.most_common(limit)]
    if len(groups) > limit:
        parts.append(f"... {len(groups) - limit} more groups")
    return ", ".join(parts)


def list_keys(keys: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` keys, comma-separated, and how many more."""
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


# -- lightly's layout: the backbone is nn.Sequential(*list(model.children())[:-1]) ----------------
def _child_positions(model) -> dict[str, str]:
    """Child name -> its position among ``model``'s children (``{"conv1": "0", "bn1": "1", ...}``)."""
    return {name: str(i) for i, (name, _) in enumerate(model.named_children())}


def positional_keys(model_keys: Sequence[str], model) -> dict[str, str]:
    """The model's keys as an ``nn.Sequential`` of its children names them: position key -> model key."""
    positions = _child_positions(model)
    out = {}
    for key in model_keys:
        head, dot, rest = key.partition(".")
        if dot and head in positions:
            out[f"{positions[head]}.{rest}"] = key
    return out


@dataclass
class KeyFit:
    """One reading of a checkpoint's state against a model.

    Attributes
    ----------
    state : dict of str to Tensor
        The state in the model's naming.
    stripped : dict of str to int
        Each prefix removed and from how many keys.
    conversion : str or None
        The converter used (``None``: keys taken as saved).
    missing : list of str
        Model keys the state lacks (optional buffers excepted).
    mismatched : list of str
        Model keys whose tensor has another shape in the state.
    unexpected : list of str
        State keys the model has no place for (heads, projectors ...).
    """

    state: dict
    stripped: dict[str, int] = field(default_factory=dict)
    conversion: str | None = None
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        return len(self.missing) + len(self.mismatched)


def _score(state: dict, model_shapes: Mapping[str, tuple], stripped, conversion) -> KeyFit:
    missing = [k for k in model_shapes if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIXES)]
    mismatched = [
        k
        for k, shape in model_shapes.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != shape
    ]
    unexpected = [k for k in state if k not in model_shapes]
    return KeyFit(state, stripped, conversion, missing, mismatched, unexpected)


def fit_state_dict(
    state: Mapping,
    model,
    *,
    strip_prefix: Sequence[str] | None = None,
    converter: tuple[str, Converter] | None = None,
) -> KeyFit:
    """The reading of ``state`` that provides the most of ``model``'s tensors.

    Parameters
    ----------
    state : mapping of str to Tensor
        The checkpoint's state dict (already taken out of its nesting).
    model : torch.nn.Module
    strip_prefix : sequence of str, optional
        Prefixes to remove, in order; by default one is detected (``detect_prefix``).
    converter : (name, callable), optional
        The architecture's own key conversion (timm's ``checkpoint_filter_fn``), tried
        when the keys as saved do not fit.

    Returns
    -------
    KeyFit
        The first of: the keys as saved, converted, or by child position (lightly),
        with the fewest missing and mis-shaped tensors.
    """
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if strip_prefix:
        prefixes = list(strip_prefix)
    else:
        detected = detect_prefix(list(state), list(model_shapes))
        prefixes = [detected] if detected else []
    plain, stripped = strip_prefixes(state, prefixes)
    best = _score(plain, model_shapes, stripped, None)
    if best.n_bad == 0:
        return best
    candidates = []
    if converter is not None:
        name, convert = converter
        try:
            converted = convert(dict(plain), model)
        except Exception as exc:  # a converter written for other checkpoints: this reading simply does not apply
            logger.debug("checkpoint: %s does not apply (%s: %s)", name, type(exc).__name__, exc)
        else:
            candidates.append(_score(dict(converted), model_shapes, stripped, name))
    by_position = positional_keys(list(model_shapes), model)
    if by_position:
        prefixes = list(strip_prefix) if strip_prefix else [detect_prefix(list(state), list(by_position))]
        positional, pos_stripped = strip_prefixes(state, [p for p in prefixes if p])
        renamed = {by_position.get(k, k): v for k, v in positional.items()}
        candidates.append(_score(renamed, model_shapes, pos_stripped, "child positions (nn.Sequential of children)"))
    for candidate in candidates:
        if candidate.n_bad < best.n_bad:
            best = candidate
    return best
