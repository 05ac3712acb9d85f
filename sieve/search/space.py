"""Search spaces: which matrices are searched, how genes group them, and what a level means.

A space is a declarative YAML file (``search_spaces/*.yaml``)::

    description: one gene per prunable matrix
    modules: ["*"]            # globs (or ``re:`` regexes) over full module names
    genes: matrix             # matrix | block | type | expert (type: one gene per matrix type per block
                              # group; expert: one gene per MoE expert, one per other matrix)
    block_group: 1            # blocks per group for ``genes: type``
    levels: {min: 0.0, max: 0.95, per_smallest_gene: 20}
    primitives: [{name: mask, pattern: unstructured}]   # N:M: ``choices`` lists the options per gene
    method: {name: fused}     # scoring method of the masks (mask-only: magnitude, wanda, fused)

``primitives`` lists what a gene may do to its matrices: zeros (``mask``), data-aware low-rank
factors (``lowrank``), or both — then every gene chooses the kind *and* the level (a ``mixed``
space). A run embeds the resolved space in its ``config.yaml``, so it never depends on the file again.

**Levels.** One level step removes ``step`` weights, the same for every gene, with ``step`` a
multiple of every matrix's row count (so for one-matrix genes a level is an exact number of weights
per row) and sized so the smallest gene has about ``per_smallest_gene`` levels. Gene ``g`` at level
``l`` prunes its matrices to sparsity ``s = l·step / numel_g`` (each matrix ``int(cols·s)`` per
row); its *cost* is the exact number of weights removed. For N:M spaces, level ``l`` selects option
``choices[l]`` (``dense`` or a pattern) and the cost is ``numel·N/M``. For low-rank genes, level
``l`` gives each matrix the largest rank that removes at least its share of ``l·step`` parameters
(a rank ``r`` removes ``out·in − r·(out+in)``); ranks at or above break-even keep a matrix dense,
so a gene's options start at the first rank that saves anything. In a mixed space a gene's options
are dense plus every mask and every rank option, ordered by cost (ties: masks first), so the
budget-keeping operators move a gene between neighbouring costs whichever kind they are.

**Budget.** The budget ``B`` asks to remove ``R = B·P`` of the ``P`` prunable weights (zeros and
factorisation savings both count; the real reduction — factorisation alone — is reported
separately); a genome is feasible when its total cost lies in ``(R' − Δ, R']`` with
``R' = ⌊R/step⌋·step`` where every level is exact (unstructured masks; ``⌊R⌋`` otherwise) and ``Δ``
the largest single-level cost increment, i.e. at most one level step *below* the budget. A budget
below one step (the smallest nonzero level cost where levels are not exact) is refused: only the
dense model would keep it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from sieve.config import Frozen, load_yaml, validate
from sieve.errors import SieveError
from sieve.models.matrix import Matrix, select_matrices
from sieve.primitives.base import DENSE, Ladder, Level, LevelGrid, Option, Primitive, PrimitiveSpec, merged_ladder
from sieve.primitives.depth import RemovedBlock
from sieve.primitives.lowrank import LowRank, RankLevel
from sieve.primitives.mask import UNSTRUCTURED, Mask, Pattern
from sieve.prune.allocation import Allocation
from sieve.resources import builtin_names, yaml_file
from sieve.scores.base import MethodSpec, ScoringMethod
from sieve.scores.fused import Fused
from sieve.search.costs import GenomeCosts

__all__ = ["Gene", "LevelGrid", "SearchSpace", "SpaceSpec"]


class SpaceSpec(Frozen):
    """A search space as written in ``search_spaces/*.yaml`` (see the module docstring)."""

    name: str
    description: str = ""
    modules: tuple[str, ...] = ("*",)
    genes: Literal["matrix", "block", "type", "expert"] = "matrix"
    block_group: int = Field(1, ge=1)
    type_groups: tuple[str, ...] = ()
    levels: LevelGrid = Field(default_factory=LevelGrid)
    primitives: tuple[PrimitiveSpec, ...] = Field(default_factory=lambda: (Mask(),), min_length=1)
    choices: tuple[str, ...] = ()
    method: MethodSpec = Field(default_factory=Fused)

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for choice in value:
            if choice != "dense":
                try:
                    Pattern.parse(choice)
                except SieveError as exc:
                    raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SpaceSpec:
        names = [p.name for p in self.primitives]
        if len(set(names)) != len(names):
            raise ValueError(f"primitives are listed twice: {names}")
        if self.pattern.structured and not self.choices:
            raise ValueError("an N:M space needs 'choices' (e.g. [dense, '2:4'])")
        if self.pattern.structured and len(self.primitives) > 1:
            raise ValueError("an N:M space cannot also factorise; use an unstructured mask with lowrank")
        if not self.method.mask_only:
            raise ValueError(f"method {self.method.name} updates weights per level; search with magnitude, wanda or fused")
        return self

    def primitive(self, name: str) -> Primitive | None:
        """The space's primitive called ``name`` (``mask``, ``lowrank``), or ``None``."""
        return next((p for p in self.primitives if p.name == name), None)

    @property
    def mask(self) -> Mask | None:
        return self.primitive("mask")

    @property
    def lowrank(self) -> LowRank | None:
        return self.primitive("lowrank")

    @property
    def pattern(self) -> Pattern:
        return self.mask.parsed if self.mask is not None else UNSTRUCTURED

    @property
    def exact(self) -> bool:
        """Whether gene level ``l`` removes exactly ``l·step`` (every primitive's levels are exact)."""
        return all(p.exact for p in self.primitives)

    @property
    def not_thresholded(self) -> str | None:
        """Why not every level is a precomputed threshold of a per-weight score — what graph-safe
        on-the-fly pruning and several candidates per forward apply — or ``None``."""
        if self.method is None or not self.method.mask_only:
            return "the scoring method is not a per-weight score (mask-only)"
        return next((why for p in self.primitives if (why := p.not_thresholded) is not None), None)

    @property
    def changes_depth(self) -> str | None:
        """Why a candidate runs another stack of decoder blocks (no graph captured once replays it,
        and blocks must be resident), or ``None``."""
        return next((why for p in self.primitives if (why := p.changes_depth) is not None), None)

    @property
    def depth(self) -> bool:
        """Whether a gene can remove a whole decoder block."""
        return self.changes_depth is not None

    @property
    def scoring(self) -> ScoringMethod | None:
        """The scoring method where something scores with it — the masks, and the OWL zeros baseline
        a space without depth genes is compared against and seeded from — else ``None``: a space of
        block removal and factors scores nothing, so its runs read no method's statistics."""
        return self.method if any(p.scored for p in self.primitives) or not self.depth else None

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources the space reads: the :attr:`scoring` method's and the primitives' own
        (``XᵀX`` of the factors). ``depth`` reads none."""
        scoring = self.scoring
        found = set(scoring.sources if scoring is not None else ()).union(*(p.sources for p in self.primitives))
        return tuple(s for s in ("general", "task") if s in found)

    @staticmethod
    def builtin_names() -> list[str]:
        """The built-in spaces (``search_spaces/*.yaml``), sorted."""
        return builtin_names("search_spaces")

    @classmethod
    def load(cls, spec: str | Path) -> SpaceSpec:
        """A built-in space by name (``per_matrix``) or a YAML file."""
        path = yaml_file(spec, "search_spaces", "search space")
        data = load_yaml(path)
        data.setdefault("name", path.stem)
        return validate(cls, data, path.name)

    @classmethod
    def resolve(cls, value: Any) -> Any:
        """Config field input: a name or path is loaded; a mapping (an embedded space) is validated as is."""
        return cls.load(value).model_dump() if isinstance(value, (str, Path)) else value


@dataclass(frozen=True)
class Gene:
    """One searched variable: the matrices it controls, and per level what it does to each of them
    (``options[l]``, one :class:`~sieve.primitives.base.Level` per matrix) and its exact cost.
    A removal gene (``removes``: its decoder block) keeps the block at level 0 — its matrices then
    follow their own genes — and removes it at level 1, whatever those genes say."""

    name: str
    matrices: tuple[Matrix, ...]
    costs: np.ndarray
    lo: int
    hi: int
    options: tuple[Option, ...]
    removes: int | None = None

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)


class SearchSpace:
    """Genes over a model's matrices with level costs; maps genomes to allocations."""

    def __init__(self, spec: SpaceSpec, matrices: Sequence[Matrix]) -> None:
        self.spec = spec
        self.matrices = select_matrices(matrices, spec.modules)
        self.pattern = spec.pattern
        groups = self._group(self.matrices)
        for primitive in spec.primitives:
            primitive.check_genes(groups, matrices)
        smallest = min(sum(m.numel for m in g) for g in groups.values())
        setter = min(spec.primitives, key=lambda p: p.order)
        self.step = setter.level_step(self.matrices, smallest, spec.levels)
        #: decoder blocks removed by genes of their own (finer genes beside them), not by a level of a block gene
        self.removal_genes = spec.depth and spec.genes != "block"
        primitives = tuple(p for p in spec.primitives if not (self.removal_genes and p.changes_depth))
        if not primitives:
            raise SieveError(f"space {spec.name}: a space that only removes blocks needs 'genes: block'")
        self.genes = [self._gene(name, tuple(ms), primitives) for name, ms in groups.items()]
        if self.removal_genes:
            self.genes += [self._removal_gene(block, ms) for block, ms in _by_block(self.matrices).items()]
        self.total = sum(m.numel for m in self.matrices)
        self.max_increment = max(int(np.diff(g.costs[g.lo : g.hi + 1]).max(initial=0)) for g in self.genes
                                 if g.removes is None)
        self.costs = self._genome_costs()

    def _group(self, matrices: Sequence[Matrix]) -> dict[str, list[Matrix]]:
        groups: dict[str, list[Matrix]] = {}
        for m in matrices:
            if self.spec.genes == "matrix" or (self.spec.genes == "expert" and m.expert is None):
                key = m.name
            elif self.spec.genes == "expert":
                key = f"block{m.block}:{m.kind.rpartition('.')[0]}"  # one gene per expert: its gate_up and down
            elif self.spec.genes == "block":
                key = f"block{m.block}"
            else:
                kind = next((t for t in self.spec.type_groups if t in m.kind), m.kind)
                key = f"blocks{m.block // self.spec.block_group}:{kind}"
            groups.setdefault(key, []).append(m)
        return groups

    def _gene(self, name: str, matrices: tuple[Matrix, ...], primitives: tuple[Primitive, ...]) -> Gene:
        ladder = self._ladder(matrices, primitives)
        return Gene(name, matrices, ladder.costs, ladder.lo, len(ladder.options) - 1, ladder.options)

    def _ladder(self, matrices: tuple[Matrix, ...], primitives: tuple[Primitive, ...]) -> Ladder:
        """One primitive: its own ladder. Several: dense plus every primitive's levels by cost."""
        spec = self.spec
        if len(primitives) == 1:
            return primitives[0].ladder(matrices, self.step, spec.levels, spec.choices)
        numel = sum(m.numel for m in matrices)
        n_levels = int(spec.levels.max * numel // self.step)
        levels = [(c, p.order, o) for p in primitives for c, o in p.levels(matrices, self.step, n_levels)]
        return merged_ladder(levels, numel, len(matrices), spec.levels)

    def _removal_gene(self, block: int, matrices: list[Matrix]) -> Gene:
        depth = next(p for p in self.spec.primitives if p.changes_depth)
        [(cost, removed)] = depth.levels(matrices, self.step, 1)
        return Gene(f"block{block}:removed", tuple(matrices), np.array([0, cost], dtype=np.int64), 0, 1,
                    ((DENSE,) * len(matrices), removed), removes=block)

    def _genome_costs(self) -> GenomeCosts:
        costs = GenomeCosts.additive([g.costs for g in self.genes], self.lower, self.upper)
        if not self.removal_genes:
            return costs
        gene_of_block = {g.removes: i for i, g in enumerate(self.genes) if g.removes is not None}
        under = np.array([-1 if g.removes is not None else gene_of_block[g.matrices[0].block] for g in self.genes],
                         dtype=np.int64)
        return GenomeCosts(costs.costs, costs.lower, costs.upper, under)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def lower(self) -> np.ndarray:
        return np.array([g.lo for g in self.genes], dtype=np.int64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([g.hi for g in self.genes], dtype=np.int64)

    def cost(self, genome: np.ndarray) -> int:
        return self.costs.total(genome)

    @property
    def smallest_cost(self) -> int:
        """The fewest parameters a budget can ask to remove: one level step (exact spaces), else the
        smallest nonzero level cost of any gene."""
        if self.spec.exact:
            return self.step
        return min(int(c) for g in self.genes for c in g.costs[g.lo : g.hi + 1] if c > 0)

    @property
    def smallest_budget(self) -> str:
        """The smallest budget accepted, as the shortest 4-significant-digit decimal at or above it."""
        cost, total = self.smallest_cost, self.total
        exponent = math.floor(math.log10(cost / total)) - 3
        units = math.ceil(Fraction(cost, total) / Fraction(10) ** exponent)
        while Fraction(str(float(Decimal(units).scaleb(exponent)))) * total < cost:
            units += 1
        return str(float(Decimal(units).scaleb(exponent)))

    def budget_window(self, budget: float) -> tuple[int, int]:
        """Feasible total cost ``(low, high]`` for ``budget``: ``high`` is ``R = budget · total``,
        rounded *down* to a whole level step in exact spaces, and ``low = high − Δ`` (``Δ`` the largest
        single-level cost increment). A budget below one step or outside the levels is an error."""
        if not 0.0 < budget < 1.0:
            raise SieveError(f"--budget must be a fraction in (0, 1), got {budget}")
        wanted = Fraction(str(budget)) * self.total  # the decimal as written: a budget on a step stays on it
        if wanted < self.smallest_cost:
            raise SieveError(f"--budget {budget:g} is below one level step of space {self.spec.name}; the smallest "
                             f"possible budget is {self.smallest_budget}")
        target = math.floor(wanted / self.step) * self.step if self.spec.exact else math.floor(wanted)
        lowest, highest = self.costs.total(self.lower), self.costs.total(self.upper)
        if target > highest or target < lowest:
            raise SieveError(
                f"budget {budget} is unreachable in space {self.spec.name}: levels allow "
                f"{lowest / self.total:.3f}..{highest / self.total:.3f}"
            )
        return target - max(self.max_increment, 1), target

    def allocation(self, genome: np.ndarray) -> Allocation:
        """The genome's levels per matrix; removal genes at 1 override their block's matrices, and a
        kept block whose every matrix is at rank 0 (the same function, the same cost) is removed."""
        levels: dict[str, Level] = {}
        for gene, l in sorted(zip(self.genes, genome), key=lambda t: t[0].removes is not None):
            if gene.removes is None or l > 0:
                levels.update((m.name, level) for m, level in zip(gene.matrices, gene.options[int(l)]))
        if self.removal_genes:
            for block, ms in _by_block(self.matrices).items():
                if all(isinstance(levels[m.name], RankLevel) and levels[m.name].rank == 0 for m in ms):
                    levels.update((m.name, RemovedBlock(block)) for m in ms)
        return Allocation.from_levels(levels)

    def row_counts(self) -> dict[str, set[int]]:
        """Every per-row prune count any level can ask of each matrix (for threshold precompute)."""
        counts: dict[str, set[int]] = {m.name: set() for m in self.matrices}
        for gene in self.genes:
            for option in gene.options:
                for m, level in zip(gene.matrices, option):
                    if level.thresholded:
                        counts[m.name].add(level.k)
        return counts

    def factorisable(self) -> list[str]:
        """Matrices some level factorises (their factors are computed up front)."""
        return sorted({m.name for g in self.genes for o in g.options for m, level in zip(g.matrices, o)
                       if level.factorised})

    def nearest_genome(self, sparsity_of: dict[str, float]) -> np.ndarray:
        """Levels closest to a per-matrix sparsity map (averaged over each gene's matrices). A removal
        gene removes its block where every matrix of it is removed whole (fraction 1); the block's
        other genes then stay at their lowest level, what keeping the block again starts from."""
        removed = {g.removes for g in self.genes
                   if g.removes is not None and all(sparsity_of.get(m.name, 0.0) >= 1.0 for m in g.matrices)}
        genome = []
        for gene in self.genes:
            if gene.removes is not None:
                genome.append(int(gene.removes in removed))
                continue
            if gene.matrices[0].block in removed:
                genome.append(gene.lo)
                continue
            want = sum(sparsity_of.get(m.name, 0.0) * m.numel for m in gene.matrices) / gene.numel
            levels = np.arange(gene.lo, gene.hi + 1)
            have = np.array([gene.costs[l] / gene.numel for l in levels])
            genome.append(int(levels[np.argmin(np.abs(have - want))]))
        return np.array(genome, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.name, "genes": self.n_genes, "step": self.step, "matrices": len(self.matrices)}


def _by_block(matrices: Sequence[Matrix]) -> dict[int, list[Matrix]]:
    found: dict[int, list[Matrix]] = {}
    for m in matrices:
        found.setdefault(m.block, []).append(m)
    return found
