"""Allocation: what happens to each matrix — zeros (sparsity, pattern), low-rank factors (rank) or
its whole decoder block removed — the one object passed between prune, search and export.

On disk an allocation is a ``sieve.allocation/v1`` JSON file (:class:`AllocationFile`, see the
README): the per-module sparsities plus everything needed to reproduce its masks exactly — the
model and the hash of its dense weights, the scoring method with its parameters, the calibration
settings and data (task, general corpus, seed, working directory) and the fingerprints of the
statistics the masks were computed from. Reading one validates it against this schema, so a
damaged or hand-edited file is one error line, never a traceback.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, field_validator, model_validator

from sieve import __version__
from sieve.config import Frozen, validate
from sieve.data.splits import SplitSpec
from sieve.errors import SieveError
from sieve.io import read_json, write_json
from sieve.models.identity import ModelIdentity
from sieve.models.matrix import Matrix
from sieve.primitives.base import Level, LevelRecord
from sieve.primitives.depth import RemovedBlock
from sieve.primitives.lowrank import LowRank, break_even_rank, rank_for_removal, rank_level, removed_params
from sieve.primitives.mask import UNSTRUCTURED, MaskLevel, Pattern, check_sparsity
from sieve.scores.base import MethodSpec, ScoringMethod
from sieve.stats.calibrate import CalibrationConfig

log = logging.getLogger(__name__)

FORMAT = "sieve.allocation/v1"


@dataclass(frozen=True)
class Allocation:
    """Per-matrix sparsity (fractions) and pattern, or rank (factorised matrices, ``ranks``), and
    the decoder blocks removed whole (``removed_blocks``: every matrix of those blocks is gone);
    matrices listed in none stay dense."""

    sparsity: Mapping[str, float]
    pattern: Pattern = UNSTRUCTURED
    patterns: Mapping[str, Pattern] = field(default_factory=dict)
    ranks: Mapping[str, int] = field(default_factory=dict)
    removed_blocks: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for name, s in self.sparsity.items():
            check_sparsity(s, f"sparsity of {name}")
        for name, rank in self.ranks.items():
            if rank < 0:
                raise SieveError(f"rank of {name} must be >= 0, got {rank}")
            if self.sparsity.get(name, 0.0) > 0:
                raise SieveError(f"{name} is both sparsified and factorised; an allocation gives each matrix one")

    @classmethod
    def from_levels(cls, levels: Mapping[str, Level]) -> Allocation:
        """The allocation that puts each named matrix at its level (each level records itself)."""
        into = LevelRecord()
        for name, level in levels.items():
            level.record(name, into)
        return cls(into.sparsity, UNSTRUCTURED, into.patterns, into.ranks, frozenset(into.removed_blocks))

    def level_of(self, m: Matrix) -> Level:
        """``m``'s level: removed with its block, its rank where one below break-even is allocated,
        else its mask (``k`` per row, per group of ``M`` for N:M), :data:`~sieve.primitives.base.DENSE`
        for none."""
        if m.block in self.removed_blocks:
            return RemovedBlock(m.block)
        if m.name in self.ranks:
            level = rank_level(*m.shape, self.ranks[m.name])
            if level.factorised:
                return level
        return MaskLevel.at(m.shape[1], self.sparsity.get(m.name, 0.0), self.pattern_of(m.name))

    @classmethod
    def uniform_rank(cls, matrices: Iterable[Matrix], fraction: float,
                     multiple: Callable[[int, int], int] = lambda rows, cols: 1) -> Allocation:
        """Every matrix at about the same rank fraction, removing at least ``fraction`` of all the
        matrices' parameters and as little more as the rank multiples allow.

        Each matrix first takes the largest rank (a multiple of ``multiple(rows, cols)``, e.g.
        :meth:`~sieve.primitives.lowrank.LowRank.multiple_for`) that removes at least ``fraction``
        of its own parameters. Rounding every rank down overshoots (with multiples of 64 on
        SmolLM2's 576-wide matrices, 0.25 asked became 0.37 removed), so ranks are then raised one
        multiple at a time, the matrix that gives up the largest fraction first, while the total
        removed stays at or above ``fraction`` of the total and the rank below break-even."""
        check_sparsity(fraction, "fraction of parameters removed")
        matrices = list(matrices)
        if fraction <= 0:
            return cls({}, UNSTRUCTURED, {}, {})
        ranks = {m.name: rank_for_removal(*m.shape, math.ceil(fraction * m.numel), multiple(*m.shape))
                 for m in matrices}
        target = math.ceil(fraction * sum(m.numel for m in matrices))
        removed = sum(removed_params(*m.shape, ranks[m.name]) for m in matrices)
        while True:
            by_fraction = sorted(matrices, key=lambda m: (-removed_params(*m.shape, ranks[m.name]) / m.numel, m.name))
            for m in by_fraction:
                step = multiple(*m.shape)
                raised = ranks[m.name] + step
                gain = removed_params(*m.shape, ranks[m.name]) - removed_params(*m.shape, raised)
                if raised < break_even_rank(*m.shape) and removed - gain >= target:
                    ranks[m.name], removed = raised, removed - gain
                    break
            else:
                return cls({}, UNSTRUCTURED, {}, ranks)

    def removed(self, m: Matrix) -> int:
        """Parameters ``m`` gives up: zeros (masks) or the factors' saving (ranks)."""
        return self.level_of(m).removed(*m.shape)

    def removed_fractions(self, matrices: Sequence[Matrix]) -> dict[str, float]:
        """Per matrix, the fraction of its parameters given up (the common scale of masks and ranks)."""
        return {m.name: self.removed(m) / m.numel for m in matrices}

    def reduction(self, matrices: Sequence[Matrix]) -> float:
        """Fraction of the matrices' parameters *really* removed (removed blocks and factorisation;
        zeros do not count)."""
        total = sum(m.numel for m in matrices)
        return sum(self.removed(m) for m in matrices if m.name in self.ranks or m.block in self.removed_blocks) / total

    @classmethod
    def uniform(cls, matrices: Iterable[Matrix], sparsity: float, pattern: Pattern = UNSTRUCTURED) -> Allocation:
        check_sparsity(sparsity)
        if pattern.structured and sparsity not in (0.0, pattern.sparsity):
            raise SieveError(f"pattern {pattern} prunes exactly {pattern.sparsity:g}, not {sparsity:g}")
        return cls({m.name: sparsity for m in matrices}, pattern)

    def pattern_of(self, name: str) -> Pattern:
        return self.patterns.get(name, self.pattern)

    def check_against(self, matrices: Sequence[Matrix], what: str = "allocation", model_id: str = "the model") -> None:
        """Refuse names the model lacks (naming the closest one) and patterns that do not divide a matrix."""
        names = [m.name for m in matrices]
        known = set(names)
        blocks = {m.block for m in matrices}
        if outside := sorted(self.removed_blocks - blocks):
            raise SieveError(f"{what} removes decoder block {outside[0]}, but {model_id} has blocks "
                             f"{min(blocks)}–{max(blocks)}")
        if blocks and self.removed_blocks >= blocks:
            raise SieveError(f"{what} removes every decoder block of {model_id}")
        unknown = [n for n in [*self.sparsity, *self.ranks] if n not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f"; closest module there: {close[0]!r}" if close else ""
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise SieveError(f"{what} names module {unknown[0]!r} that {model_id} lacks{more}{hint}")
        for m in matrices:
            if self.sparsity.get(m.name, 0.0) > 0:
                self.pattern_of(m.name).check(m.name, m.shape[1])

    def weighted_sparsity(self, matrices: Sequence[Matrix]) -> float:
        """Nominal parameter-weighted sparsity over ``matrices``."""
        total = sum(m.numel for m in matrices)
        return sum(self.sparsity.get(m.name, 0.0) * m.numel for m in matrices) / total


Sparsity = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


class AllocationFile(Frozen):
    """A ``sieve.allocation/v1`` file: the allocation plus what reproduces its masks and where it came from."""

    format: Literal["sieve.allocation/v1"]
    sieve_version: str = __version__
    # what the masks are
    pattern: str = "unstructured"
    modules: dict[str, Sparsity]
    module_patterns: dict[str, str] = {}
    module_ranks: dict[str, Annotated[int, Strict(), Field(ge=0)]] = {}
    removed_blocks: list[Annotated[int, Strict(), Field(ge=0)]] = []
    # what reproduces them
    model: str | None = None
    weights_hash: str | None = None
    model_digests: dict[str, str] = {}  # ModelIdentity.digests: config.json and tokenizer
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    method: MethodSpec | None = None
    lowrank: LowRank | None = None
    calibration: CalibrationConfig | None = None
    task: str | None = None
    general: str | None = None
    split: SplitSpec | None = None
    workdir: str | None = None
    stats: dict[str, str] = {}
    stats_hessian: bool = False
    # where it came from (search provenance; informative)
    space: str | None = None
    budget: float | None = None
    fitness: str | None = None
    config_digest: str | None = None
    achieved_sparsity: float | None = None
    fitness_value: float | None = None
    generation: int | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return str(_parse_pattern(value))

    @field_validator("module_patterns")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: str(_parse_pattern(p)) for name, p in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> AllocationFile:
        if self.module_ranks and self.lowrank is None:
            raise ValueError("module_ranks needs the 'lowrank' primitive that made the factors")
        both = set(self.module_ranks) & {n for n, s in self.modules.items() if s > 0}
        if both:
            raise ValueError(f"{sorted(both)[0]} is both sparsified and factorised")
        if len(set(self.removed_blocks)) != len(self.removed_blocks):
            raise ValueError(f"removed_blocks lists a block twice: {self.removed_blocks}")
        return self

    @property
    def allocation(self) -> Allocation:
        patterns = {n: Pattern.parse(p) for n, p in self.module_patterns.items()}
        return Allocation(dict(self.modules), Pattern.parse(self.pattern), patterns, dict(self.module_ranks),
                          frozenset(self.removed_blocks))

    @property
    def names(self) -> set[str]:
        """Every matrix the file covers (its statistics were computed for exactly these)."""
        return set(self.modules) | set(self.module_ranks)

    @classmethod
    def build(cls, allocation: Allocation, **provenance: Any) -> AllocationFile:
        body = {"format": FORMAT, "pattern": str(allocation.pattern),
                "modules": {n: float(s) for n, s in allocation.sparsity.items()}, **provenance}
        if allocation.patterns:
            body["module_patterns"] = {n: str(p) for n, p in allocation.patterns.items()}
        if allocation.ranks:
            body["module_ranks"] = {n: int(r) for n, r in allocation.ranks.items()}
        if allocation.removed_blocks:
            body["removed_blocks"] = sorted(allocation.removed_blocks)
        return validate(cls, body, "allocation")

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources the statistics came from: those recorded, else what the masks
        (method) and the factors (low-rank covariance) read."""
        found = set(self.stats)
        if not found:
            found = set(self.method.sources) if self.method is not None else set()
            if self.lowrank is not None and self.module_ranks:
                found |= set(self.lowrank.sources)
        return tuple(s for s in ("general", "task") if s in found)

    @property
    def needs_hessian(self) -> bool:
        """Whether the statistics hold ``XᵀX`` (recorded, or needed by the factors or the method)."""
        return self.stats_hessian or bool(self.module_ranks) or (self.method is not None and self.method.needs_hessian)

    @classmethod
    def read(cls, path: str | Path) -> AllocationFile:
        path = Path(path)
        if not path.is_file():
            raise SieveError(f"allocation file {path} does not exist")
        try:
            body = read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SieveError(f"allocation file {path} is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise SieveError(f"allocation file {path} must hold a JSON object, got {type(body).__name__}")
        if body.get("format") != FORMAT:
            raise SieveError(f"{path} is not a {FORMAT} allocation (format={body.get('format')!r})")
        return validate(cls, body, path.name)

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.model_dump(mode="json", exclude_none=True, exclude_defaults=False))

    def scoring_method(self, fallback: ScoringMethod | None = None) -> ScoringMethod:
        if self.method is not None:
            return self.method
        if fallback is None:
            raise SieveError("the allocation records no scoring method ('method'); give one with --method")
        return fallback

    def check_model(self, matrices: Sequence[Matrix], model_id: str, weights_hash: str, where: str,
                    identity: ModelIdentity | None = None) -> None:
        """Refuse a file made for another model: module names (closest name given) or both weight hashes."""
        self.allocation.check_against(matrices, f"allocation {where}", f"model {model_id!r}")
        if self.weights_hash is None:
            raise SieveError(f"allocation {where} records no weights_hash, so it cannot be checked against the model's "
                             f"weights; if it was made for {model_id!r}, add \"weights_hash\": \"{weights_hash}\"")
        if self.weights_hash != weights_hash:
            raise SieveError(
                f"allocation {where} was made for model {self.model!r} with weights hash {self.weights_hash}, "
                f"but {model_id!r} hashes to {weights_hash}"
            )
        changed = identity.changes(self.model_digests) if identity is not None else []
        if changed:
            raise SieveError(f"allocation {where} was made for model {self.model!r} with another config or tokenizer "
                             f"than {model_id!r} has ({'; '.join(changed)})")


def _parse_pattern(value: str) -> Pattern:
    try:
        return Pattern.parse(value)
    except SieveError as exc:
        raise ValueError(str(exc)) from None
