"""The primitive interface: *how* a matrix gives up parameters, its levels, and its registry.

A primitive turns one matrix and a level into a reduced matrix: ``mask`` zeroes weights chosen by
a scoring method (unstructured or N:M), ``lowrank`` replaces the matrix by data-aware factors. Each
primitive is a pydantic model that owns and validates its own parameters and declares what the rest
of the pipeline needs, so search spaces, allocations, the pruner and the exporters dispatch through
it instead of naming primitives:

* its **levels** for one gene (:meth:`Primitive.levels`, :meth:`Primitive.ladder`) and the level
  step it needs (:meth:`Primitive.level_step`);
* whether a level removes *exactly* ``l·step`` parameters (:attr:`Primitive.exact`: the budget is
  then rounded down to a whole step) and whether every level is a precomputed per-weight threshold
  (:attr:`Primitive.not_thresholded`: what graph-safe pruning and shared forwards apply), and
  whether a candidate runs another stack of decoder blocks (:attr:`Primitive.changes_depth`);
* which groupings of matrices into genes it can act on (:meth:`Primitive.check_genes`).

A :class:`Level` is what one matrix is at — :data:`DENSE`, ``k`` zeros per row, rank ``r`` — a
frozen, hashable value (the pruner's state, the write order's key) that costs itself
(:meth:`Level.removed`) and records itself into an allocation (:meth:`Level.record`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from sieve.config import Frozen
from sieve.models.matrix import Matrix
from sieve.registry import Registry


@dataclass
class LevelRecord:
    """An allocation being built from levels: per-matrix sparsity, N:M pattern and rank, and the
    decoder blocks removed whole."""

    sparsity: dict[str, float] = field(default_factory=dict)
    patterns: dict[str, Any] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    removed_blocks: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Level:
    """One matrix's level. Subclasses are frozen dataclasses (equal levels write equal weights)."""

    #: applied as a precomputed per-row threshold of a per-weight score (an unstructured mask)
    thresholded: ClassVar[bool] = False
    #: applied from the matrix's low-rank factors
    factorised: ClassVar[bool] = False

    def removed(self, rows: int, cols: int) -> int:
        """Parameters a ``rows × cols`` matrix gives up at this level."""
        return 0

    #: applied by taking the matrix's whole decoder block out of the forward
    removes_block: ClassVar[bool] = False

    def record(self, name: str, into: LevelRecord) -> None:
        """Write this level of matrix ``name`` into an allocation being built."""
        into.sparsity[name] = 0.0


@dataclass(frozen=True)
class Dense(Level):
    def __str__(self) -> str:
        return "dense"


DENSE = Dense()

Option = tuple[Level, ...]
"""What one gene level does: one :class:`Level` per matrix of the gene."""


class LevelGrid(Frozen):
    """How finely a space's levels cut each gene (fractions of the gene's parameters)."""

    min: float = Field(0.0, ge=0.0, lt=1.0)
    max: float = Field(0.95, ge=0.0, lt=1.0)
    per_smallest_gene: int = Field(20, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> LevelGrid:
        if self.min > self.max:
            raise ValueError(f"levels need min <= max, got min={self.min} max={self.max}")
        return self


@dataclass(frozen=True)
class Ladder:
    """A gene's options in level order: ``costs[l]`` parameters removed by ``options[l]``; the
    search keeps the gene at ``lo`` or above."""

    costs: np.ndarray
    options: tuple[Option, ...]
    lo: int


def merged_ladder(levels: Sequence[tuple[int, int, Option]], numel: int, n_matrices: int, grid: LevelGrid) -> Ladder:
    """Dense, then every ``(cost, order, option)`` by cost (ties: the lower primitive ``order``
    first); ``lo`` is the first option removing at least ``grid.min`` of the gene's ``numel``.

    An option that removes the decoder block supersedes every other option of the same cost: at the
    block's full cost those are its matrices at rank 0, the same function (the block adds nothing to
    the residual stream) but an identity block that an export would still run."""
    removal_costs = {c for c, _, o in levels if any(level.removes_block for level in o)}
    levels = [t for t in levels if t[0] not in removal_costs or any(level.removes_block for level in t[2])]
    ordered = sorted(levels, key=lambda t: (t[0], t[1]))
    costs = np.array([0, *(c for c, _, _ in ordered)], dtype=np.int64)
    options = ((DENSE,) * n_matrices, *(o for _, _, o in ordered))
    lo = int(np.searchsorted(costs, grid.min * numel - 1e-9))
    return Ladder(costs, options, min(lo, len(options) - 1))


class Primitive(Frozen, ABC):
    name: str
    #: a space with several primitives takes the level step of the lowest ``order`` and lists its
    #: levels first among equal costs
    order: ClassVar[int] = 100
    #: whether its levels are chosen by the space's scoring method (the method's calibration
    #: sources are then read; a space of primitives that never score reads none of them)
    scored: ClassVar[bool] = False

    @property
    def exact(self) -> bool:
        """Whether gene level ``l`` removes exactly ``l·step`` parameters (the budget is then a whole
        number of steps)."""
        return False

    @property
    def not_thresholded(self) -> str | None:
        """Why not every level is a precomputed threshold of a per-weight score, or ``None``."""
        return f"the space has {self.name} levels"

    @property
    def changes_depth(self) -> str | None:
        """Why a candidate's forward runs another stack of blocks (so no captured graph replays it),
        or ``None``."""
        return None

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources this primitive itself reads (beyond the scoring method's)."""
        return ()

    def check_genes(self, genes: Mapping[str, Sequence[Matrix]], matrices: Sequence[Matrix]) -> None:
        """Refuse a grouping of the space's matrices into ``genes`` this primitive cannot act on
        (``matrices``: all the model's)."""

    @abstractmethod
    def level_step(self, matrices: Sequence[Matrix], smallest: int, grid: LevelGrid) -> int:
        """Parameters one level step of a space over ``matrices`` removes (``smallest``: the
        smallest gene's parameters)."""

    @abstractmethod
    def levels(self, matrices: Sequence[Matrix], step: int, n_levels: int) -> list[tuple[int, Option]]:
        """``(cost, option)`` of this primitive's levels ``1 … n_levels`` (removing about ``l·step``
        each) for a gene of ``matrices``; dense excluded."""

    def ladder(self, matrices: Sequence[Matrix], step: int, grid: LevelGrid, choices: Sequence[str]) -> Ladder:
        """The gene's options when this is the space's only primitive (``choices``: the space's
        explicit per-gene options, for primitives that take them)."""
        numel = sum(m.numel for m in matrices)
        levels = self.levels(matrices, step, int(grid.max * numel // step))
        return merged_ladder([(c, self.order, o) for c, o in levels], numel, len(matrices), grid)


PRIMITIVES: Registry[Primitive] = Registry("pruning primitive", "sieve.primitives")
PrimitiveSpec = PRIMITIVES.field(Primitive)
