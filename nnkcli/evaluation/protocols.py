"""Protocol presets: the k values, temperature, top-5 rule and solver other tools evaluate with.

``--protocol NAME`` sets these four; an option given explicitly overrides its preset value,
and the result document records the preset and every resulting setting. Each preset was
checked against the source's own code (file and line, at the commit named):

- ``dino``: facebookresearch/dino @ 7c446df, ``eval_knn.py``: ``--nb_knn`` default
  ``[10, 20, 100, 200]`` (l. 194), ``--temperature`` default 0.07 (l. 196); weights
  ``exp(s / T)`` (l. 165). Its top-5 sorts all ``num_classes=1000`` scores (l. 143, 173),
  so on a dataset with fewer classes the zero-score classes of the dataset rarely reach the
  top 5 among ~1000 tied zeros: ``strict`` is the rule that matches it.
- ``dinov2``: facebookresearch/dinov2 @ b8931f7, ``dinov2/eval/knn.py``: ``nb_knn=[10, 20,
  100, 200]``, ``temperature=0.07`` (l. 90-91); weights ``softmax(s / T)`` over the largest
  k (l. 178), a per-query constant factor on DINO's weights (same ranking); top-5 from
  torchmetrics ``MulticlassAccuracy(top_k=5)`` over all classes
  (``dinov2/eval/metrics.py`` l. 59-61): ``inclusive``.
- ``instdisc`` (InstDisc, reused by MoCo): zhirongw/lemniscate.pytorch @ f7cfe29,
  ``main.py``: ``kNN(..., 200, args.nce_t)`` (l. 177) with ``--nce-t`` default 0.07 (l. 72);
  ``test.py``: weights ``exp(s / sigma)`` (l. 114), ``C = trainLabels.max() + 1`` (l. 79)
  and ``probs.sort`` over those C classes for top-5 (l. 116, 123): ``inclusive``.
- ``vissl``: facebookresearch/vissl @ 09270ed, ``vissl/config/defaults.yaml``:
  ``NEAREST_NEIGHBOR.SIGMA: 0.1`` (l. 1693), ``TOPK: 200`` (l. 1696);
  ``vissl/utils/knn_utils.py``: weights ``exp(s / sigma)`` (l. 309), ``probs.sort`` over
  all classes (l. 317): ``inclusive``.
- ``nnk-paper``: shekkizh/VISSL_NNK_Benchmark @ 85a98ec, ``nnk_benchmark.py``: ``--top_k``
  default 50 (l. 26), the pruning solver (l. 69-71, ``utils/non_neg_qpsolver.py``; see
  ``nnkcli.numerics.pruning``), top-5 from ``probs.sort`` over all classes (l. 81-84):
  ``inclusive``. It has no k-NN; the k-NN settings are DINO's.
- ``nnkcli``: this tool's defaults (strict top-5, exact solver, T = 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnkcli.errors import InputError

SOLVERS = ("exact", "pruning")


@dataclass(frozen=True)
class Protocol:
    """What a preset sets. ``k_values`` is the sweep's list; ``classify_k`` is classify's one k."""

    name: str
    k_values: tuple[int, ...]
    classify_k: int
    temperatures: tuple[float, ...]
    top5_rule: str
    solver: str
    source: str

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "k_values": list(self.k_values),
            "classify_k": self.classify_k,
            "temperatures": list(self.temperatures),
            "top5_rule": self.top5_rule,
            "solver": self.solver,
            "source": self.source,
        }


#: DINO's help text for --nb_knn: "20 is usually working the best" (eval_knn.py l. 195); classify
#: evaluates one k, so the multi-k presets use that one there
_DINO_K = (10, 20, 100, 200)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("nnkcli", tuple(range(10, 201, 10)), 50, (0.07,), "strict", "exact", "nnkcli defaults"),
        Protocol("dino", _DINO_K, 20, (0.07,), "strict", "exact", "facebookresearch/dino eval_knn.py"),
        Protocol("dinov2", _DINO_K, 20, (0.07,), "inclusive", "exact", "facebookresearch/dinov2 dinov2/eval/knn.py"),
        Protocol("instdisc", (200,), 200, (0.07,), "inclusive", "exact", "zhirongw/lemniscate.pytorch test.py"),
        Protocol("vissl", (200,), 200, (0.1,), "inclusive", "exact", "facebookresearch/vissl vissl/utils/knn_utils.py"),
        Protocol(
            "nnk-paper", (50,), 50, (0.07,), "inclusive", "pruning", "shekkizh/VISSL_NNK_Benchmark nnk_benchmark.py"
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The preset called ``name``; an ``InputError`` naming the choices otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InputError(f"unknown protocol {name!r}", hint=f"choose one of: {', '.join(PROTOCOLS)}") from None
