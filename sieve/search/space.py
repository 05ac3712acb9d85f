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
``R' = round(R/step)·step`` for mask-only spaces (``R`` otherwise) and ``Δ`` the largest
single-level cost increment, i.e. within one level step of the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from sieve.config import Frozen, load_yaml, validate
from sieve.errors import SieveError
from sieve.models.matrix import Matrix, select_matrices
from sieve.primitives.base import PrimitiveSpec
from sieve.primitives.lowrank import LowRank, break_even_rank, rank_for_removal, removed_params
from sieve.primitives.mask import UNSTRUCTURED, Mask, Pattern, row_prune_count
from sieve.prune.allocation import Allocation
from sieve.resources import yaml_file
from sieve.scores.base import MethodSpec
from sieve.scores.fused import Fused


class LevelGrid(Frozen):
    min: float = Field(0.0, ge=0.0, lt=1.0)
    max: float = Field(0.95, ge=0.0, lt=1.0)
    per_smallest_gene: int = Field(20, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> LevelGrid:
        if self.min > self.max:
            raise ValueError(f"levels need min <= max, got min={self.min} max={self.max}")
        return self


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
        if self.pattern.structured and self.lowrank is not None:
            raise ValueError("an N:M space cannot also factorise; use an unstructured mask with lowrank")
        if not self.method.mask_only:
            raise ValueError(f"method {self.method.name} updates weights per level; search with magnitude, wanda or fused")
        return self

    @property
    def mask(self) -> Mask | None:
        return next((p for p in self.primitives if isinstance(p, Mask)), None)

    @property
    def lowrank(self) -> LowRank | None:
        return next((p for p in self.primitives if isinstance(p, LowRank)), None)

    @property
    def pattern(self) -> Pattern:
        return self.mask.parsed if self.mask is not None else UNSTRUCTURED

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources the space reads: the method's (masks, OWL seed) and the factors'."""
        found = set(self.method.sources) | set(self.lowrank.sources if self.lowrank else ())
        return tuple(s for s in ("general", "task") if s in found)

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
class Choice:
    """What one level does to a gene's matrices: per-matrix sparsities (and an N:M pattern), or
    per-matrix ranks (factorised). All zeros and no ranks: dense."""

    sparsity: tuple[float, ...]
    pattern: Pattern = UNSTRUCTURED
    ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Gene:
    """One searched variable: the matrices it controls and the exact cost of each level."""

    name: str
    matrices: tuple[Matrix, ...]
    costs: np.ndarray
    lo: int
    hi: int
    options: tuple[Choice, ...]

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)


def _split_removal(matrices: Sequence[Matrix], target: int) -> list[int]:
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


class SearchSpace:
    """Genes over a model's matrices with level costs; maps genomes to allocations."""

    def __init__(self, spec: SpaceSpec, matrices: Sequence[Matrix]) -> None:
        self.spec = spec
        self.matrices = select_matrices(matrices, spec.modules)
        self.pattern = spec.pattern
        groups = self._group(self.matrices)
        smallest = min(sum(m.numel for m in g) for g in groups.values())
        if spec.mask is not None:  # a multiple of every row count: mask levels are whole weights per row
            rows_lcm = math.lcm(*{m.shape[0] for m in self.matrices})
            self.step = rows_lcm * max(1, smallest // (spec.levels.per_smallest_gene * rows_lcm))
        else:  # a multiple of the largest rank granularity (out + in): every level moves every rank
            grain = max(sum(m.shape) for m in self.matrices)
            self.step = grain * max(1, int(spec.levels.max * smallest) // (spec.levels.per_smallest_gene * grain))
        self.genes = [self._gene(name, tuple(ms)) for name, ms in groups.items()]
        self.total = sum(m.numel for m in self.matrices)
        self.max_increment = max(int(np.diff(g.costs[g.lo : g.hi + 1]).max(initial=0)) for g in self.genes)

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

    def _gene(self, name: str, matrices: tuple[Matrix, ...]) -> Gene:
        numel = sum(m.numel for m in matrices)
        if self.pattern.structured:
            patterns = [UNSTRUCTURED if c == "dense" else Pattern.parse(c) for c in self.spec.choices]
            for p in patterns:
                for m in matrices:
                    p.check(m.name, m.shape[1])
            options = [Choice(tuple(p.sparsity for _ in matrices), p) for p in patterns]
            costs = np.array([int(round(p.sparsity * numel)) for p in patterns], dtype=np.int64)
            return Gene(name, matrices, costs, 0, len(options) - 1, tuple(options))
        n_levels = int(self.spec.levels.max * numel // self.step)
        dense = Choice(tuple(0.0 for _ in matrices))
        masks = [self._mask_level(matrices, level) for level in range(1, n_levels + 1)] if self.spec.mask else []
        if self.spec.lowrank is None:  # levels in order: level l removes l·step weights
            options = [(0, dense), *masks]
            lo = math.ceil(self.spec.levels.min * numel / self.step - 1e-9)
            return Gene(name, matrices, np.array([c for c, _ in options], dtype=np.int64), min(lo, n_levels), n_levels,
                        tuple(o for _, o in options))
        ranks = self._rank_levels(matrices, n_levels)
        ordered = sorted([(c, 0, o) for c, o in masks] + [(c, 1, o) for c, o in ranks], key=lambda t: (t[0], t[1]))
        options = [(0, dense)] + [(c, o) for c, _, o in ordered]
        costs = np.array([c for c, _ in options], dtype=np.int64)
        lo = int(np.searchsorted(costs, self.spec.levels.min * numel - 1e-9))
        return Gene(name, matrices, costs, min(lo, len(options) - 1), len(options) - 1, tuple(o for _, o in options))

    def _mask_level(self, matrices: tuple[Matrix, ...], level: int) -> tuple[int, Choice]:
        counts = _split_removal(matrices, level * self.step)
        cost = sum(m.shape[0] * k for k, m in zip(counts, matrices))
        return cost, Choice(tuple(k / m.shape[1] for k, m in zip(counts, matrices)))

    def _rank_levels(self, matrices: tuple[Matrix, ...], n_levels: int) -> list[tuple[int, Choice]]:
        """Level ``l``: each matrix the largest rank (a multiple of the primitive's ``rank_multiple``)
        removing at least its share of ``l·step``."""
        numel = sum(m.numel for m in matrices)
        found: list[tuple[int, Choice]] = []
        for level in range(1, n_levels + 1):
            target = level * self.step
            ranks = tuple(rank_for_removal(*m.shape, math.ceil(target * m.numel / numel), self.spec.lowrank.rank_multiple)
                          for m in matrices)
            if found and found[-1][1].ranks == ranks:
                continue
            cost = sum(removed_params(*m.shape, r) for m, r in zip(matrices, ranks))
            found.append((cost, Choice(tuple(0.0 for _ in matrices), UNSTRUCTURED, ranks)))
        return found

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
        return int(sum(g.costs[int(l)] for g, l in zip(self.genes, genome)))

    def budget_window(self, budget: float) -> tuple[int, int]:
        """Feasible total cost ``(low, high]`` for ``budget``; an unreachable budget is an error."""
        if not 0.0 < budget < 1.0:
            raise SieveError(f"--budget must be a fraction in (0, 1), got {budget}")
        exact = not self.pattern.structured and self.spec.lowrank is None
        target = round(budget * self.total / self.step) * self.step if exact else int(budget * self.total)
        lowest = sum(int(g.costs[g.lo]) for g in self.genes)
        highest = sum(int(g.costs[g.hi]) for g in self.genes)
        if target > highest or target < lowest:
            raise SieveError(
                f"budget {budget} is unreachable in space {self.spec.name}: levels allow "
                f"{lowest / self.total:.3f}..{highest / self.total:.3f}"
            )
        return target - max(self.max_increment, 1), target

    def allocation(self, genome: np.ndarray) -> Allocation:
        sparsity: dict[str, float] = {}
        patterns: dict[str, Pattern] = {}
        ranks: dict[str, int] = {}
        for gene, level in zip(self.genes, genome):
            choice = gene.options[int(level)]
            for i, m in enumerate(gene.matrices):
                if choice.ranks:
                    if choice.ranks[i] < break_even_rank(*m.shape):
                        ranks[m.name] = choice.ranks[i]
                    sparsity[m.name] = 0.0
                    continue
                sparsity[m.name] = choice.sparsity[i]
                if choice.pattern.structured:
                    patterns[m.name] = choice.pattern
        return Allocation(sparsity, UNSTRUCTURED, patterns, ranks)

    def row_counts(self) -> dict[str, set[int]]:
        """Every per-row prune count any level can ask of each matrix (for threshold precompute)."""
        counts: dict[str, set[int]] = {m.name: set() for m in self.matrices}
        for gene in self.genes:
            for choice in gene.options:
                if not choice.pattern.structured and not choice.ranks:
                    for m, s in zip(gene.matrices, choice.sparsity):
                        counts[m.name].add(row_prune_count(m.shape[1], s))
        return counts

    def factorisable(self) -> list[str]:
        """Matrices some level factorises (their factors are computed up front)."""
        return sorted({m.name for g in self.genes for c in g.options if c.ranks for m in g.matrices})

    def nearest_genome(self, sparsity_of: dict[str, float]) -> np.ndarray:
        """Levels closest to a per-matrix sparsity map (averaged over each gene's matrices)."""
        genome = []
        for gene in self.genes:
            want = sum(sparsity_of.get(m.name, 0.0) * m.numel for m in gene.matrices) / gene.numel
            levels = np.arange(gene.lo, gene.hi + 1)
            have = np.array([gene.costs[l] / gene.numel for l in levels])
            genome.append(int(levels[np.argmin(np.abs(have - want))]))
        return np.array(genome, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.name, "genes": self.n_genes, "step": self.step, "matrices": len(self.matrices)}
