"""What a genome removes: per-gene level costs, and the removal genes that override other genes.

Gene ``i`` at level ``l`` removes ``costs[i][l]`` parameters. Most genes add up. A *removal gene*
(one per decoder block, in a space that removes blocks beside finer genes: ``deploy``) has two
levels, keep (0) and remove (1, the block's prunable parameters); while it removes its block, the
genes of that block's matrices (``under[j] = i``) remove nothing more, whatever their level::

    cost(x) = Σ_{i : under[i] < 0 or x[under[i]] = 0} costs[i][x[i]]

so the cost is exact in both cases, and moving gene ``i`` by one level changes it by
:meth:`GenomeCosts.delta` — for a removal gene the block's size minus what its matrices' genes
removed. A space without removal genes has ``under = −1`` everywhere: the plain sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class GenomeCosts:
    """Level costs, level bounds and overrides of a space's genes (see the module docstring)."""

    costs: tuple[np.ndarray, ...]
    lower: np.ndarray
    upper: np.ndarray
    under: np.ndarray

    @classmethod
    def additive(cls, costs: Sequence[np.ndarray], lower: np.ndarray, upper: np.ndarray) -> GenomeCosts:
        """Genes whose costs simply add up (no removal genes)."""
        return cls(tuple(costs), np.asarray(lower), np.asarray(upper), np.full(len(costs), -1, dtype=np.int64))

    @cached_property
    def removal(self) -> np.ndarray:
        """Whether each gene is a removal gene (it overrides others)."""
        flags = np.zeros(len(self.costs), dtype=bool)
        flags[self.under[self.under >= 0]] = True
        return flags

    def overridden(self, genome: np.ndarray) -> np.ndarray:
        """Whether each gene's level counts for nothing (its block is removed)."""
        under = self.under
        return (under >= 0) & (np.asarray(genome)[np.maximum(under, 0)] > 0)

    def total(self, genome: np.ndarray) -> int:
        """Exact parameters ``genome`` removes."""
        counted = ~self.overridden(genome)
        return int(sum(int(c[int(l)]) for c, l, keep in zip(self.costs, genome, counted) if keep))

    def delta(self, genome: np.ndarray, gene: int, move: int) -> int:
        """Change of :meth:`total` when ``gene`` moves by ``move`` (±1) levels."""
        x = np.asarray(genome)
        if self.under[gene] >= 0 and x[self.under[gene]] > 0:
            return 0
        change = int(self.costs[gene][x[gene] + move] - self.costs[gene][x[gene]])
        if self.removal[gene]:
            covered = sum(int(self.costs[j][x[j]]) for j in np.flatnonzero(self.under == gene))
            change += -covered if move > 0 else covered
        return change

    def movable(self, genome: np.ndarray, move: int) -> np.ndarray:
        """Genes that can move by ``move`` (±1) and whose move changes anything (not overridden)."""
        x = np.asarray(genome)
        room = x < self.upper if move > 0 else x > self.lower
        return np.flatnonzero(room & ~self.overridden(x))
