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
that primitive sets the step and removal is one more option of the block's gene, the costliest.

**Genes.** A depth gene must hold exactly the prunable matrices of one decoder block (``genes:
block`` over every matrix of the blocks it covers): removing a block whose other matrices the
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
        """Every gene is one whole decoder block: all of the block's prunable ``matrices``."""
        per_block: dict[int, set[str]] = {}
        for m in matrices:
            per_block.setdefault(m.block, set()).add(m.name)
        for name, members in genes.items():
            blocks = {m.block for m in members}
            if len(blocks) != 1:
                raise SieveError(f"the depth primitive needs one gene per decoder block ('genes: block'); gene {name} "
                                 f"spans blocks {sorted(blocks)}")
            missing = per_block[blocks.pop()] - {m.name for m in members}
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise SieveError(f"the depth primitive removes whole blocks, but gene {name} leaves out "
                                 f"{sorted(missing)[0]}{more}: select every matrix of the blocks (modules: ['*'])")
