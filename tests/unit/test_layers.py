"""The architecture, checked: no import circle, no arrow up the layers, one owner per dependency,
and a core that imports and runs with click, rich, torch and matplotlib unavailable.

The import graph is read from the source (every ``import``, also those inside functions:
a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nnkcli"

# rank of each top-level part of the package: an import must go to a lower rank, or stay inside
# its own part (where only circles are forbidden)
LAYERS = {
    "errors": 0,
    "plain": 0,
    "progress": 0,
    "nnkcli": 0,  # "nnkcli": the package itself, for __version__
    "data": 0,  # the sample store's path (no imports)
    "numerics": 1,
    "storage": 1,
    "settings": 1,
    "index": 2,
    "parallel": 3,
    "shards": 3,
    "evaluation": 4,
    "extract": 4,
    "plots": 5,
    "tensorboard_log": 5,
    "estimators": 5,
    "tracking": 5,
    "output": 6,
    "integrations": 6,  # experiment trackers and training frameworks, over the evaluation and tracking
    "process": 6,
    "cli": 7,
    "commands": 8,
    "entry": 9,  # the console script: its start-up signal handlers, then the command line
    "__main__": 10,
}
# top-level modules that belong to a part named otherwise: the index and its two siblings, the figures' panels
PART_OF = {
    "index_file": "index",
    "index_flat": "index",
    "index_kernel": "index",
    "index_bf16": "index",
    "index_mkl": "index",
    "plots_panels": "plots",
}
# third-party packages and the one part of nnkcli that may import each
OWNERS = {
    "h5py": {"storage"},
    # the index family: index (build, load, search), index_file (the file format), index_flat (exact search)
    "faiss": {"index", "index_file", "index_flat", "shards"},
    "matplotlib": {"plots"},
    "fcntl": {"storage.atomic"},
    # oneMKL's bfloat16 product, loaded as a shared library (the 'mkl' extra)
    "ctypes": {"index_mkl"},
    "click": {"cli", "commands"},
    "rich": {"output"},
    # the compiled NNK kernel (optional: the 'fast' extra)
    "numba": {"numerics.compiled_kernel"},
    # the GPU path: the search backend and its NNK solve (kept apart: each a module to read in one sitting);
    # the bfloat16 product of the flat index's certified search (--search-kernel bf16)
    "torch": {"extract", "evaluation.torch_backend", "evaluation.torch_solver", "integrations.training", "index_bf16"},
    # the training-time callback (optional: the 'lightning' extra; the package's older name too)
    "lightning": {"integrations.lightning"},
    "pytorch_lightning": {"integrations.lightning"},
    # result rows as a DataFrame (optional: the 'pandas' extra)
    "pandas": {"evaluation.results"},
    # the experiment trackers (optional: the 'wandb' and 'mlflow' extras), one module each
    "wandb": {"integrations.wandb_export"},
    "mlflow": {"integrations.mlflow_export"},
    # the model zoos of nnk extract --model timm:NAME / hf:DIR (optional: the 'timm' and 'hf' extras)
    "timm": {"extract.timm_models"},
    "transformers": {"extract.hf_models"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(nnkcli module -> nnkcli modules it imports, nnkcli module -> third-party top-level names)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, third = {}, {}
    for name, path in modules.items():
        deps, outside = set(), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == "nnkcli":
                    for alias in node.names:
                        full = f"{node.module}.{alias.name}"
                        deps.add(full if full in modules else node.module)
                else:
                    outside.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    (deps if alias.name.split(".")[0] == "nnkcli" else outside).add(
                        alias.name if alias.name.split(".")[0] == "nnkcli" else alias.name.split(".")[0]
                    )
        graph[name] = {d for d in deps if d in modules and d != name}
        third[name] = outside
    return graph, third


def part(module: str) -> str:
    pieces = module.split(".")
    top = pieces[1] if len(pieces) > 1 else "nnkcli"
    return PART_OF.get(top, top)


def test_every_part_has_a_layer():
    graph, _ = import_graph()
    assert {part(m) for m in graph} <= set(LAYERS), sorted({part(m) for m in graph} - set(LAYERS))


def test_no_import_circle():
    graph, _ = import_graph()
    graph = {m: {d for d in deps if d != "nnkcli"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_arrows_point_down():
    graph, _ = import_graph()
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if part(d) != part(m) and LAYERS[part(d)] >= LAYERS[part(m)]
    )
    assert upward == []


def test_one_owner_per_dependency():
    _, third = import_graph()
    strays = []
    for module, names in third.items():
        for name, owners in OWNERS.items():
            inside = module.split(".", 1)[1] if "." in module else module
            if name in names and not any(inside == o or inside.startswith(o + ".") for o in owners):
                strays.append(f"{module} imports {name}")
    assert strays == []


def test_the_index_family_is_one_part_below_its_users():
    graph, third = import_graph()
    family = {m for m in graph if part(m) == "index"}
    siblings = tuple(f"nnkcli.index_{name}" for name in ("file", "flat", "kernel", "bf16", "mkl"))
    assert family == {"nnkcli.index", *siblings}
    assert {m for m, names in third.items() if "faiss" in names} <= family
    # the siblings are the index's parts, not its users: neither imports nnkcli.index
    assert not {"nnkcli.index"} & set().union(*(graph[m] for m in siblings))


#: the longest a module may be (``wc -l``): small enough to read in one sitting
MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines():
    lines = {str(p.relative_to(PACKAGE.parent)): p.read_bytes().count(b"\n") for p in PACKAGE.rglob("*.py")}
    assert len(lines) > 50 and max(lines.values()) > 300  # the count really sees the package
    too_long = sorted(f"{name} ({n} lines)" for name, n in lines.items() if n > MAX_MODULE_LINES)
    assert too_long == [], f"split these modules by responsibility (at most {MAX_MODULE_LINES} lines): {too_long}"


def test_the_arrow_check_can_fail(monkeypatch):
    # the graph really contains arrows: a core module reaching up to the CLI would be reported
    graph, _ = import_graph()
    assert "nnkcli.evaluation.options" in graph["nnkcli.evaluation.classification"]
    assert LAYERS[part("nnkcli.output")] > LAYERS[part("nnkcli.tracking.runner")]


BLOCKED_CORE = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("click", "rich", "torch", "matplotlib", "numba", "wandb", "mlflow")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from pathlib import Path
    from nnkcli import classify, sweep, write_split, ScoringOptions, evaluate_sources
    from nnkcli.evaluation.sweeps import sweep as sweep_fn

    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8)) * 2
    out = Path(sys.argv[1])
    for split, n in (("train", 120), ("val", 30)):
        y = rng.integers(0, 3, n)
        write_split(out / "s.h5", split, (means[y] + rng.normal(size=(n, 8))).astype(np.float32), y, source="t")
    doc = classify(out / "s.h5", k=5)
    assert [r["method"] for r in doc["results"]] == ["nnk", "knn"], doc
    result = sweep(out / "s.h5", k_values="3..9:3")
    assert result.document["k_values"] == [3, 6, 9]
    [outcome] = evaluate_sources([out / "s.h5"], out / "h.jsonl", options=ScoringOptions(k_values="5,10"),
                                 sweep=sweep_fn)
    assert outcome.status == "evaluated", outcome
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print("ok")
""")


def test_core_runs_without_click_rich_torch_matplotlib(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", BLOCKED_CORE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["classify", "sweep", "FeatureStore", "write_split", "nnk_solve", "nnk_weights"])
def test_public_api_is_lazy_and_cli_free(name):
    code = (
        f"import sys; import nnkcli; before = set(sys.modules); getattr(nnkcli, {name!r}); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('click', 'rich', 'torch', 'matplotlib')]; "
        "print(bad)"
    )
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_one_spelling_of_neighbor():
    root = PACKAGE.parent
    texts = [*PACKAGE.rglob("*.py"), root / "README.md", *root.glob("docs/**/*.md"), *root.glob("benchmarks/*.py")]
    british = "neighb" + "our"  # split, so that this file does not match itself
    found = [str(p.relative_to(root)) for p in texts if p.is_file() and british in p.read_text().lower()]
    assert found == [], f"use 'neighbor' (American) in: {found}"
