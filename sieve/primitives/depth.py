"""The depth primitive: a whole decoder block removed.

A model with fewer decoder blocks is the one reduction every runtime serves faster without custom
code (transformers, vLLM, llama.cpp, TGI): its config is standard and its cost falls in proportion
to the blocks removed. A ``depth`` gene is one decoder block; its options are to keep it (at
whatever other primitives of the space allow: dense, or factorised in a ``deploy`` space) or to
remove it, which costs every prunable parameter of the block:

    cost(remove block b) = Σ_{m ∈ block b} out_m · in_m

Removing a block is exact, not approximate: in memory the block is taken out of the forward
(:mod:`sieve.prune.depth`), the same rewrite that the export saves
(:func:`sieve.models.depth.remove_blocks`), so the candidate a search scores is the model it exports.

**Step.** Alone in a space the level step is the greatest common divisor of the blocks' prunable
parameters (one block, where all blocks are alike), so every total cost is a whole number of steps
and a budget rounds down to whole blocks. Beside another primitive (``deploy``: low-rank factors)
that primitive sets the step.

**Genes.** Under ``genes: block`` removal is the costliest level of each block's gene. Under finer
genes (``genes: matrix``: the ``deploy`` space, each matrix dense or factorised at its own rank) the
space adds one *removal gene* per block beside them, keep or remove, which while it removes the
block overrides its matrices' genes (:mod:`sieve.search.costs`). Either way the space must hold
every prunable matrix of the model (``modules: ['*']``): removing a block whose other matrices the
space does not count would remove more than the budget says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.primitives.base import PRIMITIVES, Level, LevelGrid, LevelRecord, Option, Primitive


@dataclass(frozen=True)
class RemovedBlock(Level):
    """The matrix's decoder block ``block`` is taken out of the model."""

    block: int
    removes_block: ClassVar[bool] = True

    def removed(self, rows: int, cols: int) -> int:
        return rows * cols

    def record(self, name: str, into: LevelRecord) -> None:
        into.removed_blocks.add(self.block)

    def __str__(self) -> str:
        return f"block {self.block} removed"


def block_sizes(matrices: Sequence[Matrix]) -> dict[int, int]:
    """Prunable parameters per decoder block."""
    sizes: dict[int, int] = {}
    for m in matrices:
        sizes[m.block] = sizes.get(m.block, 0) + m.numel
    return sizes


@PRIMITIVES.register
class Depth(Primitive):
    """Remove whole decoder blocks (see the module docstring)."""

    name: Literal["depth"] = "depth"
    order: ClassVar[int] = 2

    @property
    def exact(self) -> bool:
        return True

    @property
    def not_thresholded(self) -> str | None:
        return "the space removes decoder blocks"

    @property
    def changes_depth(self) -> str | None:
        return "the space removes decoder blocks (each candidate runs another stack of blocks)"

    def level_step(self, matrices: Sequence[Matrix], smallest: int, grid: LevelGrid) -> int:
        """The greatest common divisor of the blocks' prunable parameters."""
        return math.gcd(*block_sizes(matrices).values())

    def levels(self, matrices: Sequence[Matrix], step: int, n_levels: int) -> list[tuple[int, Option]]:
        """One level whatever ``n_levels``: the block removed, at the cost of all its parameters."""
        blocks = {m.block for m in matrices}
        if len(blocks) != 1:
            raise SieveError(f"a depth gene holds one decoder block, this one spans blocks {sorted(blocks)}")
        block = blocks.pop()
        return [(sum(m.numel for m in matrices), (RemovedBlock(block),) * len(matrices))]

    def check_genes(self, genes: Mapping[str, Sequence[Matrix]], matrices: Sequence[Matrix]) -> None:
        """Every gene lies within one decoder block, and the space holds every prunable matrix of
        the model's blocks (``matrices``): removing a block the space only partly counts would
        remove more than the budget says."""
        selected = {m.name for members in genes.values() for m in members}
        left_out = [m.name for m in matrices if m.name not in selected]
        if left_out:
            more = f" (and {len(left_out) - 1} more)" if len(left_out) > 1 else ""
            raise SieveError(f"the depth primitive removes whole blocks, but the space leaves out {left_out[0]}{more}: "
                             "select every matrix of the blocks (modules: ['*'])")
        for name, members in genes.items():
            blocks = {m.block for m in members}
            if len(blocks) != 1:
                raise SieveError(f"the depth primitive needs genes within one decoder block ('genes: block' or "
                                 f"'genes: matrix'); gene {name} spans blocks {sorted(blocks)}")
