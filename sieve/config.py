"""Configuration: CLI flags / YAML → one resolved, validated, frozen object → components.

Every command builds exactly one frozen dataclass (:class:`PruneConfig`, :class:`EvalConfig`,
:class:`SearchConfig`), validates it in ``__post_init__`` (a bad value is a :class:`SieveError`
naming the field), writes it to the run directory, and hands typed fields to the components.
:func:`from_dict` refuses unknown keys, so a typo in a YAML file is an error, not a silent default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sieve.errors import SieveError
from sieve.prune.mask import Pattern, check_sparsity

T = TypeVar("T")


@dataclass(frozen=True)
class CalibrationConfig:
    """How much text the calibration statistics see, and whether they are collected block by
    block (``sequential``: one decoder block at a time over all batches, for large models)."""

    general_blocks: int = 128
    block_len: int = 256
    task_examples: int = 128
    batch_size: int = 8
    sequential: bool = False

    def __post_init__(self) -> None:
        _positive(self, "general_blocks", "block_len", "task_examples", "batch_size")


@dataclass(frozen=True)
class EvalSettings:
    """The held-out report: task test split and Wikipedia perplexity."""

    test_examples: int = 500
    ppl_blocks: int = 32
    block_len: int = 256
    batch_size: int = 16

    def __post_init__(self) -> None:
        _positive(self, "test_examples", "ppl_blocks", "block_len", "batch_size")


@dataclass(frozen=True)
class MethodConfig:
    """A scoring method and its options (``source`` for wanda/sparsegpt; tau/alpha/beta for fused)."""

    name: str = "fused"
    source: str = "general"
    tau: float = 2.0
    alpha: float = 0.5
    beta: float = 2.0

    def build(self):
        from sieve.scores import get_method

        if self.name == "fused":
            return get_method("fused", tau=self.tau, alpha=self.alpha, beta=self.beta)
        return get_method(self.name, source=self.source)


@dataclass(frozen=True)
class PruneConfig:
    model: str = "smollm2-135m"
    task: str = "rotten_tomatoes"
    general: str = "wikipedia"
    method: MethodConfig = field(default_factory=MethodConfig)
    sparsity: float = 0.5
    pattern: str = "unstructured"
    allocation: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        pattern = Pattern.parse(self.pattern)
        if pattern.structured and self.allocation is None and self.sparsity not in (0.0, pattern.sparsity):
            object.__setattr__(self, "sparsity", pattern.sparsity)


@dataclass(frozen=True)
class EvalConfig:
    model: str = "smollm2-135m"
    task: str = "rotten_tomatoes"
    general: str = "wikipedia"
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    evaluation: EvalSettings = field(default_factory=EvalSettings)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise SieveError(f"{type(obj).__name__}.{name} must be positive, got {getattr(obj, name)}")


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def digest(config: Any) -> str:
    """Short content hash of a config or plain mapping (stable across runs and machines)."""
    data = config if isinstance(config, dict) else to_dict(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SieveError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if origin is tuple:
        (inner, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SieveError(f"{where} must be a list, got {value!r}")
        return tuple(_convert(inner, v, where) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise SieveError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (YAML) mapping; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SieveError(f"unknown config key {where + '.' if where else ''}{unknown[0]}")
    kwargs = {k: _convert(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SieveError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SieveError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SieveError(f"{path} must hold a mapping at the top level")
    return data


def replace(config: T, **changes: Any) -> T:
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search's result (written to ``runs/NAME/config.yaml``).

    ``stages``: validation examples scored at each multi-fidelity stage before the full validation
    set; ``keep``: candidates promoted after each of those stages. Defaults fit a 2-core CPU demo
    (``make demo``); GPU runs use ``--config configs/gpu.yaml`` (the settings behind the README's
    measured results).
    """

    model: str = "smollm2-135m"
    task: str = "rotten_tomatoes"
    general: str = "wikipedia"
    space: str = "per_matrix"
    budget: float = 0.5
    generations: int = 10
    offspring: int = 8
    population: int = 6
    seed: int = 0
    fitness: str = "task_nll"
    general_weight: float = 0.0
    general_fitness_blocks: int = 8
    tolerance: float | None = None
    validation_examples: int = 64
    stages: tuple[int, ...] = (16,)
    keep: tuple[int, ...] = (2,)
    batch_size: int = 16
    workers: int = 0
    ray_address: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    calibration: CalibrationConfig = field(default_factory=lambda: CalibrationConfig(general_blocks=32, task_examples=64))
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(test_examples=200, ppl_blocks=16))

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise SieveError(f"--budget must be a fraction in (0, 1), got {self.budget}")
        _positive(self, "generations", "offspring", "population", "validation_examples", "batch_size")
        if self.workers < 0:
            raise SieveError(f"--workers must be >= 0, got {self.workers}")
        if len(self.stages) != len(self.keep):
            raise SieveError("stages and keep need one entry per early stage")
        sizes = list(self.stages) + [self.validation_examples]
        if any(a >= b for a, b in zip(sizes, sizes[1:])) or any(s <= 0 for s in sizes):
            raise SieveError(f"stage sizes must increase up to validation_examples: {sizes}")
        keeps = [self.offspring] + list(self.keep)
        if any(a < b for a, b in zip(keeps, keeps[1:])) or any(k <= 0 for k in keeps):
            raise SieveError(f"keep must be positive and non-increasing from offspring: {keeps}")
        if self.tolerance is not None and not 0.0 < self.tolerance < 1.0:
            raise SieveError(f"--tolerance must be a fraction in (0, 1), got {self.tolerance}")
        if self.general_weight < 0:
            raise SieveError(f"--general-weight must be >= 0, got {self.general_weight}")

    def identity(self) -> dict[str, Any]:
        """Fields a resume must not change (model, data, budget and everything that shapes results)."""
        data = to_dict(self)
        for volatile in ("generations", "workers", "ray_address", "device"):
            data.pop(volatile)
        return data
