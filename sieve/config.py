"""Configuration plumbing: YAML / CLI flags → one validated, frozen pydantic model → components.

Each command's config lives with its stage (:class:`sieve.search.config.SearchConfig`,
:class:`sieve.prune.config.PruneConfig`, :class:`sieve.evaluate.config.EvalConfig`) and each
pluggable method (score, primitive, fitness, exporter) validates its own parameters. They all
derive from :class:`Frozen`: unknown keys are errors (a typo in a YAML file must not become a
silent default), instances are immutable, and :func:`validate` turns every validation problem into
one :class:`~sieve.errors.SieveError` line naming the field, e.g.
``config.yaml: calibration.batch_size: must be positive (got 0)``. Defaults are written once, on
the model's fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sieve.errors import SieveError

M = TypeVar("M", bound=BaseModel)


class Frozen(BaseModel):
    """Base of every config and method-parameter model: no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_QUIET_INPUT = {"value_error", "extra_forbidden", "missing", "assertion_error"}
#: ``where`` for configs built from command-line flags
FLAGS = "--"


def one_line(exc: ValidationError, where: str = "", flagged: Collection[str] = ()) -> str:
    """Every error of ``exc`` on one line: ``where.field.path: message (got value)``; a field in
    ``flagged`` (its value came from a command-line flag) is named as the flag, ``--field``."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in error["loc"] if not str(x).startswith(("function-", "json-or-python")))
        if where == FLAGS or (loc and loc.partition(".")[0] in flagged):  # command-line flags: name them as the user typed them
            head, dot, rest = loc.partition(".")
            path = f"--{head.replace('_', '-')}{dot}{rest}" if loc else ""
        else:
            path = ".".join(p for p in (where, loc) if p)
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] not in _QUIET_INPUT:
            message += f" (got {error['input']!r})"
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)


def validate(cls: type[M], data: Any, where: str = "", flagged: Collection[str] = ()) -> M:
    """``cls`` from a mapping (YAML / JSON / flags); any problem is one SieveError line. ``flagged``:
    the keys whose values the user typed as flags over a file named by ``where``."""
    if not isinstance(data, dict):
        raise SieveError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SieveError(one_line(exc, where, flagged)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; missing file, bad YAML or another top level is one line."""
    path = Path(path)
    if not path.is_file():
        raise SieveError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SieveError(f"{path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise SieveError(f"{path} must hold a mapping at the top level")
    return data


def to_dict(model: BaseModel) -> dict[str, Any]:
    """Plain JSON/YAML-able data (tuples become lists) that :func:`validate` reads back equal."""
    return model.model_dump(mode="json")


def digest(data: BaseModel | dict[str, Any]) -> str:
    """Short content hash of a config or mapping (key order does not matter; stable across machines)."""
    plain = to_dict(data) if isinstance(data, BaseModel) else data
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12]


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.path: run has A, now B`` for every leaf that differs between two mappings."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: run has {a!r}, now {b!r}")
    return found
