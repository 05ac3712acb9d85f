"""The masking primitive: ``(scores, sparsity, pattern) -> mask``.

Comparison group = one output row (Wanda): a row of ``cols`` weights at sparsity ``s`` loses exactly
``k = int(cols · s)`` weights, the ``k`` lowest-scoring ones, so every row, and therefore the matrix,
is exact to one weight per row. Ties are broken by column index (a stable sort), which keeps masks
deterministic even for quantised weights where many magnitudes coincide.

``N:M``: within each row, in each group of ``M`` consecutive input columns, the ``N`` lowest scores
are pruned; the sparsity is then ``N / M`` by construction.

**Levels.** A matrix's level is :class:`MaskLevel` ``k``: ``k`` weights pruned per row (per group of
``M`` for N:M), costing ``rows · k`` (``rows · cols/M · N``) parameters. In a search space one level
step is a multiple of every matrix's row count, so gene level ``l`` removes ``l·step`` weights
split over its matrices (:func:`split_removal`); N:M genes choose among the space's ``choices``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.primitives.base import DENSE, PRIMITIVES, Ladder, Level, LevelGrid, LevelRecord, Option, Primitive


@dataclass(frozen=True, order=True)
class Pattern:
    """``unstructured`` (``m == 0``) or ``N:M`` (prune ``n`` of every ``m`` consecutive inputs)."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str | Pattern | None) -> Pattern:
        if isinstance(text, Pattern):
            return text
        if text is None or text in ("", "unstructured", "0:0"):
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
        if not match:
            raise SieveError(f"pattern {text!r} is neither 'unstructured' nor N:M such as '2:4'")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise SieveError(f"pattern {text!r} needs 0 < N < M")
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return self.n / self.m if self.m else 0.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"

    def check(self, name: str, cols: int) -> None:
        if self.m and cols % self.m:
            raise SieveError(f"pattern {self} does not divide {name}: {cols} input columns")


UNSTRUCTURED = Pattern()


@dataclass(frozen=True)
class MaskLevel(Level):
    """``k`` weights pruned per row (per group of ``pattern.m`` for N:M). ``sparsity`` is the nominal
    fraction it came from, not part of the level's identity: equal ``k`` writes equal masks."""

    k: int
    pattern: Pattern = UNSTRUCTURED
    sparsity: float = field(default=0.0, compare=False)

    @classmethod
    def at(cls, cols: int, sparsity: float, pattern: Pattern = UNSTRUCTURED) -> Level:
        """The level of a ``cols``-column matrix at ``sparsity`` (:data:`DENSE` when nothing is pruned)."""
        k = round(sparsity * pattern.m) if pattern.structured else row_prune_count(cols, sparsity)
        return cls(k, pattern, sparsity) if k else DENSE

    @property
    def thresholded(self) -> bool:  # type: ignore[override]
        return not self.pattern.structured

    def removed(self, rows: int, cols: int) -> int:
        return rows * (cols // self.pattern.m) * self.k if self.pattern.structured else rows * self.k

    def record(self, name: str, into: LevelRecord) -> None:
        into.sparsity[name] = self.sparsity
        if self.pattern.structured:
            into.patterns[name] = self.pattern

    def __str__(self) -> str:
        return f"{self.pattern} ({self.k} per group)" if self.pattern.structured else f"{self.k} zeros per row"


@PRIMITIVES.register
class Mask(Primitive):
    """Zero weights: per output row the lowest-scoring ones (``unstructured``), or ``N`` of every
    ``M`` consecutive inputs (``N:M``, e.g. ``2:4``)."""

    name: Literal["mask"] = "mask"
    pattern: str = "unstructured"
    order: ClassVar[int] = 0  # whole weights per row: its step is every space's step
    scored: ClassVar[bool] = True

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        try:
            return str(Pattern.parse(value))
        except SieveError as exc:
            raise ValueError(str(exc)) from None

    @property
    def parsed(self) -> Pattern:
        return Pattern.parse(self.pattern)

    @property
    def exact(self) -> bool:
        return not self.parsed.structured

    @property
    def not_thresholded(self) -> str | None:
        return "the space prunes in N:M patterns" if self.parsed.structured else None

    def level_step(self, matrices: Sequence[Matrix], smallest: int, grid: LevelGrid) -> int:
        """A multiple of every row count (a level is whole weights per row), about ``smallest /
        per_smallest_gene``."""
        rows_lcm = math.lcm(*{m.shape[0] for m in matrices})
        return rows_lcm * max(1, smallest // (grid.per_smallest_gene * rows_lcm))

    def levels(self, matrices: Sequence[Matrix], step: int, n_levels: int) -> list[tuple[int, Option]]:
        found = []
        for level in range(1, n_levels + 1):
            counts = split_removal(matrices, level * step)
            cost = sum(m.shape[0] * k for k, m in zip(counts, matrices))
            found.append((cost, tuple(MaskLevel.at(m.shape[1], k / m.shape[1]) for k, m in zip(counts, matrices))))
        return found

    def ladder(self, matrices: Sequence[Matrix], step: int, grid: LevelGrid, choices: Sequence[str]) -> Ladder:
        """Unstructured: level ``l`` removes ``l·step`` weights, ``lo`` the first level at ``grid.min``.
        N:M: the space's ``choices`` (``dense`` or a pattern), in their order."""
        if self.parsed.structured:
            patterns = [UNSTRUCTURED if c == "dense" else Pattern.parse(c) for c in choices]
            for p in patterns:
                for m in matrices:
                    p.check(m.name, m.shape[1])
            options = tuple(tuple(MaskLevel.at(m.shape[1], p.sparsity, p) for m in matrices) for p in patterns)
            costs = [sum(level.removed(*m.shape) for level, m in zip(o, matrices)) for o in options]
            return Ladder(np.array(costs, dtype=np.int64), options, 0)
        numel = sum(m.numel for m in matrices)
        n_levels = int(grid.max * numel // step)
        levels = [(0, (DENSE,) * len(matrices)), *self.levels(matrices, step, n_levels)]
        lo = math.ceil(grid.min * numel / step - 1e-9)
        return Ladder(np.array([c for c, _ in levels], dtype=np.int64), tuple(o for _, o in levels), min(lo, n_levels))


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise SieveError(f"{what} must be a fraction in [0, 1), got {sparsity}")
    return sparsity


def row_prune_count(cols: int, sparsity: float) -> int:
    """Weights removed per row at ``sparsity``: ``int(cols · s)`` with a guard for float error."""
    return min(cols, int(cols * sparsity + 1e-9))


def prune_order(scores: torch.Tensor) -> torch.Tensor:
    """Column indices of each row sorted from least to most important (stable)."""
    return torch.sort(scores, dim=1, stable=True).indices


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern = UNSTRUCTURED) -> torch.Tensor:
    """Boolean keep-mask of ``scores`` (out × in); ``True`` keeps a weight.

    Unstructured: the ``int(cols · sparsity)`` lowest scores of each row are pruned.
    ``N:M``: ``sparsity`` must be 0 (dense) or ``N/M``; the ``N`` lowest of each group of ``M`` go.
    """
    rows, cols = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pattern.structured:
        if sparsity == 0:
            return keep
        if abs(sparsity - pattern.sparsity) > 1e-9:
            raise SieveError(f"pattern {pattern} implies sparsity {pattern.sparsity}, got {sparsity}")
        pattern.check("matrix", cols)
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        lowest = torch.sort(groups, dim=-1, stable=True).indices[..., : pattern.n]
        keep.view(rows, cols // pattern.m, pattern.m).scatter_(-1, lowest, False)
        return keep
    k = row_prune_count(cols, sparsity)
    if k:
        keep.scatter_(1, prune_order(scores)[:, :k], False)
    return keep


def split_removal(matrices: Sequence[Matrix], target: int) -> list[int]:
    """Per-row prune counts ``k_m`` with ``Σ rows_m · k_m`` as close to ``target`` as rows allow.

    All matrices start at ``floor(cols_m · s)`` with ``s = target / numel``; the remainder is
    handed out one row-sweep at a time (largest matrices first), so one gene's matrices share
    its sparsity up to one weight per row and the gene's cost is exact whenever row counts allow.
    """
    numel = sum(m.numel for m in matrices)
    s = target / numel
    counts = [row_prune_count(m.shape[1], s) for m in matrices]
    left = target - sum(m.shape[0] * k for k, m in zip(counts, matrices))
    for i in sorted(range(len(matrices)), key=lambda i: -matrices[i].numel):
        m = matrices[i]
        if m.shape[0] <= left and counts[i] < m.shape[1]:
            counts[i] += 1
            left -= m.shape[0]
    return counts
