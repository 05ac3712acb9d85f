"""Search spaces: which matrices are searched, how genes group them, and what a level means.

A space is a declarative YAML file (``search_spaces/*.yaml``)::

    description: one gene per prunable matrix
    modules: ["*"]            # globs (or ``re:`` regexes) over full module names
    genes: matrix             # matrix | block | type   (type: one gene per matrix type per block group)
    block_group: 1            # blocks per group for ``genes: type``
    levels: {min: 0.0, max: 0.95, per_smallest_gene: 20}
    primitive: {name: mask, pattern: unstructured}   # N:M: ``choices`` lists the options per gene
    method: {name: fused}     # scoring method (mask-only: magnitude, wanda, fused)

A run embeds the resolved space in its ``config.yaml``, so it never depends on the file again.

**Levels.** One level step removes ``step`` weights, the same for every gene, with ``step`` a
multiple of every matrix's row count (so for one-matrix genes a level is an exact number of weights
per row) and sized so the smallest gene has about ``per_smallest_gene`` levels. Gene ``g`` at level
``l`` prunes its matrices to sparsity ``s = l·step / numel_g`` (each matrix ``int(cols·s)`` per
row); its *cost* is the exact number of weights removed. For N:M spaces, level ``l`` selects option
``choices[l]`` (``dense`` or a pattern) and the cost is ``numel·N/M``.

**Budget.** The budget ``B`` asks to remove ``R = B·P`` of the ``P`` prunable weights; a genome is
feasible when its total cost lies in ``(R' − Δ, R']`` with ``R' = round(R/step)·step`` and ``Δ`` the
largest single-level cost increment, i.e. within one level step of the budget.
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
    genes: Literal["matrix", "block", "type"] = "matrix"
    block_group: int = Field(1, ge=1)
    type_groups: tuple[str, ...] = ()
    levels: LevelGrid = Field(default_factory=LevelGrid)
    primitive: PrimitiveSpec = Field(default_factory=Mask)
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
        if self.pattern.structured and not self.choices:
            raise ValueError("an N:M space needs 'choices' (e.g. [dense, '2:4'])")
        if not self.method.mask_only:
            raise ValueError(f"method {self.method.name} updates weights per level; search with magnitude, wanda or fused")
        return self

    @property
    def pattern(self) -> Pattern:
        return self.primitive.parsed

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
    """One searched variable: the matrices it controls and the exact cost of each level."""

    name: str
    matrices: tuple[Matrix, ...]
    costs: np.ndarray
    lo: int
    hi: int
    options: tuple[tuple[tuple[float, ...], Pattern], ...]

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
        rows_lcm = math.lcm(*{m.shape[0] for m in self.matrices})
        smallest = min(sum(m.numel for m in g) for g in groups.values())
        self.step = rows_lcm * max(1, smallest // (spec.levels.per_smallest_gene * rows_lcm))
        self.genes = [self._gene(name, tuple(ms)) for name, ms in groups.items()]
        self.total = sum(m.numel for m in self.matrices)
        self.max_increment = max(int(np.diff(g.costs[g.lo : g.hi + 1]).max(initial=0)) for g in self.genes)

    def _group(self, matrices: Sequence[Matrix]) -> dict[str, list[Matrix]]:
        groups: dict[str, list[Matrix]] = {}
        for m in matrices:
            if self.spec.genes == "matrix":
                key = m.name
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
            options = [(tuple(p.sparsity for _ in matrices), p) for p in patterns]
            costs = np.array([int(round(p.sparsity * numel)) for p in patterns], dtype=np.int64)
            return Gene(name, matrices, costs, 0, len(options) - 1, tuple(options))
        n_levels = int(self.spec.levels.max * numel // self.step)
        options, costs = [], []
        for level in range(n_levels + 1):
            counts = _split_removal(matrices, level * self.step)
            options.append((tuple(k / m.shape[1] for k, m in zip(counts, matrices)), UNSTRUCTURED))
            costs.append(sum(m.shape[0] * k for k, m in zip(counts, matrices)))
        lo = math.ceil(self.spec.levels.min * numel / self.step - 1e-9)
        return Gene(name, matrices, np.array(costs, dtype=np.int64), min(lo, n_levels), n_levels, tuple(options))

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
        target = round(budget * self.total / self.step) * self.step if not self.pattern.structured else int(budget * self.total)
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
        for gene, level in zip(self.genes, genome):
            per_matrix, pattern = gene.options[int(level)]
            for m, s in zip(gene.matrices, per_matrix):
                sparsity[m.name] = s
                if pattern.structured:
                    patterns[m.name] = pattern
        return Allocation(sparsity, UNSTRUCTURED, patterns)

    def row_counts(self) -> dict[str, set[int]]:
        """Every per-row prune count any level can ask of each matrix (for threshold precompute)."""
        counts: dict[str, set[int]] = {m.name: set() for m in self.matrices}
        for gene in self.genes:
            for per_matrix, pattern in gene.options:
                if not pattern.structured:
                    for m, s in zip(gene.matrices, per_matrix):
                        counts[m.name].add(row_prune_count(m.shape[1], s))
        return counts

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
