"""The package reads as a pipeline: every import points down the layers, and no module imports one
that imports it back (function-level imports included)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sieve"

#: low → high; a module may import its own layer and the layers before it
LAYERS = [
    ("core", ["sieve.errors", "sieve.config", "sieve.registry", "sieve.io", "sieve.lock", "sieve.resources"]),
    ("data", ["sieve.data"]),
    ("models", ["sieve.models", "sieve.workspace"]),
    ("stats", ["sieve.stats"]),
    ("scores/primitives", ["sieve.primitives", "sieve.scores"]),
    ("prune", ["sieve.prune"]),
    ("scoring", ["sieve.scoring"]),
    ("metrics", ["sieve.metrics"]),
    ("search", ["sieve.search"]),
    ("evaluate", ["sieve.evaluate"]),
    ("export", ["sieve.export", "sieve.report"]),
    ("tune", ["sieve.tune"]),
    ("cli", ["sieve.cli"]),
    ("api", ["sieve"]),  # the package itself: the public facade (``sieve.load_pretrained``), above everything
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if path.name == "__main__.py":  # an entry point (`python -m sieve.cli`): running it is not importing it
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or (prefix != "sieve" and module.startswith(prefix + "."))) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + ".") and name != "sieve":
                    edges[module].add(name)
    return edges


def test_every_import_points_down_the_pipeline():
    modules = _modules()
    upward = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
              for a, targets in _edges(modules).items() for b in targets if _layer(b) > _layer(a)]
    assert upward == []


def test_no_import_cycles():
    edges = _edges(_modules())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in reach(b)})
    assert cycles == []


def test_every_module_imports():
    """Every module imports in a fresh interpreter, the most dependent first (so each top-level
    module is imported before anything else pulls it in). Import-order bugs come from cycles,
    which the static check above excludes; an interpreter per module would take ~2 s each."""
    names = sorted(_modules(), key=_layer, reverse=True)
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
