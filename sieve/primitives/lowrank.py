"""The low-rank primitive: a matrix replaced by the rank-``r`` projection that best preserves its
*output* on calibration data (SVD-LLM, arXiv 2403.07378; task-aware in LLM-Sieve, arXiv 2505.18350).

For ``W`` (out × in) and input covariance ``C = XᵀX`` over calibration tokens, the rank-``r``
``W'`` minimising ``‖(W − W')Xᵀ‖_F`` is, with the damped Cholesky factor ``C + λI = LLᵀ``
(``λ = damp · mean(diag C)``) and the SVD ``WL = UΣVᵀ``::

    W' = (U_r Σ_r) (V_rᵀ L⁻¹) = A_r B_r,      A: out × r,  B: r × in

since ``‖(W − W')Xᵀ‖²_F = tr((W − W')C(W − W')ᵀ) = ‖(W − W')L‖²_F`` and ``(W − W')L`` is then the
Eckart–Young residual of ``WL``. One SVD per matrix gives every rank: a level is a slice.

**Which covariance.** ``general`` or ``task`` statistics, or the fused mixture (sieve's rule,
the covariance analogue of the fused score)::

    C_fused = (1 − α) · C_g / mean(diag C_g) + α · C_t / mean(diag C_t)        (α = 0.5)

each source normalised by its mean channel energy so that neither dominates by scale; ``α = 0``
is general-only (SVD-LLM), ``α = 1`` task-only (LLM-Sieve's choice); the two ends are the
ablation.

**Parameters.** A factorised matrix stores ``r · (out + in)`` values; it is only worth it below
the break-even rank ``r* = ⌈out · in / (out + in)⌉``, so rank ``r < r*`` removes
``out · in − r · (out + in)`` parameters and anything else keeps the matrix dense.

**Levels.** A matrix's level is :class:`RankLevel` ``r``. Gene level ``l`` gives each matrix the
largest rank (a multiple of its rank multiple, :meth:`LowRank.multiple_for`) removing at least its
share of ``l·step``; the step is
a multiple of the largest ``out + in`` so that every level moves every rank. :class:`FactorCache`
holds each factorised matrix's factors up to break-even, computed once: every rank is a slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.primitives.base import DENSE, PRIMITIVES, Level, LevelGrid, LevelRecord, Option, Primitive
from sieve.stats import MatrixStats


def break_even_rank(rows: int, cols: int) -> int:
    """Smallest rank at which factors are no smaller than the dense matrix: ``⌈rows·cols / (rows + cols)⌉``."""
    return math.ceil(rows * cols / (rows + cols))


def factor_params(rows: int, cols: int, rank: int) -> int:
    """Parameters stored for ``rank`` (dense when factors would not be smaller)."""
    return rank * (rows + cols) if rank < break_even_rank(rows, cols) else rows * cols


def removed_params(rows: int, cols: int, rank: int) -> int:
    return rows * cols - factor_params(rows, cols, rank)


def rank_for_removal(rows: int, cols: int, removed: int, multiple: int = 1) -> int:
    """The largest rank (a multiple of ``multiple``) that removes at least ``removed`` parameters
    (``break_even_rank`` for 0: dense)."""
    if removed <= 0:
        return break_even_rank(rows, cols)
    return max(0, (rows * cols - removed) // (rows + cols)) // multiple * multiple


def mixed_covariance(general: torch.Tensor | None, task: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``(1 − α)·C_g/mean(diag C_g) + α·C_t/mean(diag C_t)`` (either source alone when ``α`` is 0 or 1)."""
    parts = []
    for weight, cov in ((1.0 - alpha, general), (alpha, task)):
        if weight > 0:
            if cov is None:
                raise ValueError("the covariance of a source with positive weight is missing")
            c = cov.double()
            parts.append(weight * c / torch.diagonal(c).mean().clamp_min(1e-30))
    return sum(parts)


def whitening(cov: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Lower Cholesky factor ``L`` of ``C + λI`` (``λ = damp · mean(diag C)``; channels that never
    fired get a unit diagonal, so a singular ``C`` still factorises)."""
    c = cov.double().clone()
    dead = torch.diagonal(c) <= 0
    c[dead, :] = 0
    c[:, dead] = 0
    c[dead, dead] = 1.0
    c.diagonal().add_(damp * torch.diagonal(c).mean())
    return torch.linalg.cholesky(c)


@dataclass(frozen=True)
class Factors:
    """``W ≈ A[:, :r] @ B[:r]`` for every ``r``; ``sigma`` are the leading singular values of ``WL``
    and ``energy`` is ``‖WL‖²_F``, the sum of *all* their squares (also those not kept)."""

    a: torch.Tensor  # out × k, U Σ
    b: torch.Tensor  # k × in, Vᵀ L⁻¹
    sigma: torch.Tensor
    energy: float = 0.0

    def lost(self, rank: int) -> float:
        """The fraction of the output energy on calibration data that rank ``rank`` loses,
        ``‖(W − A_r B_r)L‖²_F / ‖WL‖²_F = 1 − Σ_{i<r} σ_i² / ‖WL‖²_F`` (Eckart–Young)."""
        kept = float((self.sigma[:rank].double() ** 2).sum())
        return max(0.0, 1.0 - kept / self.energy) if self.energy > 0 else 0.0

    def weight(self, rank: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The rank-``rank`` reconstruction ``A_r B_r`` (out × in)."""
        w = self.a[:, :rank] @ self.b[:rank]
        return w if dtype is None else w.to(dtype)

    def truncated(self, rank: int) -> Factors:
        return Factors(self.a[:, :rank].contiguous(), self.b[:rank].contiguous(), self.sigma[:rank], self.energy)


def factorize(weight: torch.Tensor, cov: torch.Tensor, damp: float = 0.01, keep: int | None = None) -> Factors:
    """The data-aware factors of ``weight`` (out × in) under covariance ``cov`` (in × in), float64,
    keeping the leading ``keep`` components (default all ``min(out, in)``)."""
    w = weight.double()
    lower = whitening(cov.to(w.device), damp)
    u, s, vh = torch.linalg.svd(w @ lower, full_matrices=False)
    k = min(keep or len(s), len(s))
    a = u[:, :k] * s[:k]
    # V_rᵀ L⁻¹ = (L⁻ᵀ V_r)ᵀ: one triangular solve, no explicit inverse
    b = torch.linalg.solve_triangular(lower.T, vh[:k].T, upper=True).T
    return Factors(a.contiguous(), b.contiguous(), s[:k].clone(), float((s.double() ** 2).sum()))


@dataclass(frozen=True)
class RankLevel(Level):
    """A matrix replaced by its rank-``rank`` factors ``A_r B_r`` (``rank`` below break-even)."""

    rank: int
    factorised: ClassVar[bool] = True

    def removed(self, rows: int, cols: int) -> int:
        return removed_params(rows, cols, self.rank)

    def record(self, name: str, into: LevelRecord) -> None:
        into.sparsity[name] = 0.0
        into.ranks[name] = self.rank

    def __str__(self) -> str:
        return f"rank {self.rank}"


def rank_level(rows: int, cols: int, rank: int) -> Level:
    """:class:`RankLevel` ``rank``, or :data:`DENSE` at or above break-even (factors would not be smaller)."""
    return RankLevel(rank) if rank < break_even_rank(rows, cols) else DENSE


Covariance = Literal["general", "task", "fused"]

#: Ranks of matrices at least ``ALIGNED_SIDE`` on their smaller side are multiples of
#: ``ALIGNED_MULTIPLE`` unless a space says otherwise. Measured (``benchmarks/gemm_shapes.py``, one
#: H200, bf16, the two GEMMs ``(x·Vᵀ)·Uᵀ`` of a factorised matrix against the next rank up that is a
#: multiple of 64): ranks just off a multiple of 64 ran up to 8.1× slower at prefill (32768 tokens;
#: 6.4–8.1× on 576×1536, 4096×4096 and 14336×4096) and up to 1.2–4.4× slower in decode (1 and 32
#: tokens) on every shape from 576 to 14336 wide, i.e. slower than the larger aligned rank that does
#: more work. Below 512 nothing was measured and a factorised GEMM is launch-bound anyway; there
#: (the test models) ranks stay free.
ALIGNED_MULTIPLE, ALIGNED_SIDE = 64, 512


@PRIMITIVES.register
class LowRank(Primitive):
    """Replace a matrix by data-aware low-rank factors (see the module docstring)."""

    name: Literal["lowrank"] = "lowrank"
    covariance: Covariance = "fused"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="task weight of the fused covariance")
    damp: float = Field(0.01, gt=0.0, description="Cholesky damping, a fraction of the mean channel energy")
    rank_multiple: int | Literal["auto"] = Field(
        "auto", description="ranks are multiples of this; auto: 64 for matrices whose smaller side is at least "
                            f"{ALIGNED_SIDE}, 1 below (see ALIGNED_MULTIPLE)")
    order: ClassVar[int] = 1

    @field_validator("rank_multiple")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError("rank_multiple must be 'auto' or at least 1")
        return value

    def multiple_for(self, rows: int, cols: int) -> int:
        """The rank multiple of an ``rows × cols`` matrix (:data:`ALIGNED_MULTIPLE` under ``auto``)."""
        if self.rank_multiple != "auto":
            return self.rank_multiple
        return ALIGNED_MULTIPLE if min(rows, cols) >= ALIGNED_SIDE else 1

    @property
    def not_thresholded(self) -> str | None:
        return "the space has factorised (low-rank) levels"

    def level_step(self, matrices: Sequence[Matrix], smallest: int, grid: LevelGrid) -> int:
        """A multiple of the largest rank granularity ``out + in`` (every level moves every rank)."""
        grain = max(sum(m.shape) for m in matrices)
        return grain * max(1, int(grid.max * smallest) // (grid.per_smallest_gene * grain))

    def levels(self, matrices: Sequence[Matrix], step: int, n_levels: int) -> list[tuple[int, Option]]:
        """Level ``l``: each matrix the largest rank (a multiple of ``rank_multiple``) removing at
        least its share of ``l·step``; levels that change no rank are skipped."""
        numel = sum(m.numel for m in matrices)
        found: list[tuple[int, Option]] = []
        last: tuple[int, ...] | None = None
        for level in range(1, n_levels + 1):
            target = level * step
            ranks = tuple(rank_for_removal(*m.shape, math.ceil(target * m.numel / numel), self.multiple_for(*m.shape))
                          for m in matrices)
            if ranks == last:
                continue
            last = ranks
            cost = sum(removed_params(*m.shape, r) for m, r in zip(matrices, ranks))
            found.append((cost, tuple(rank_level(*m.shape, r) for m, r in zip(matrices, ranks))))
        return found

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources whose ``XᵀX`` this primitive reads."""
        if self.covariance == "fused":
            return tuple(s for s, w in (("general", 1 - self.alpha), ("task", self.alpha)) if w > 0)
        return (self.covariance,)

    def covariance_of(self, general: torch.Tensor | None, task: torch.Tensor | None) -> torch.Tensor:
        alpha = {"general": 0.0, "task": 1.0, "fused": self.alpha}[self.covariance]
        return mixed_covariance(general, task, alpha)


class FactorCache:
    """Each factorised matrix's data-aware factors up to its break-even rank, float32 on the matrix's
    compute device: one SVD per matrix, computed on first use (or up front, for a search)."""

    def __init__(self, lowrank: LowRank | None, stats: Mapping[str, MatrixStats]) -> None:
        self.lowrank, self.stats = lowrank, stats
        self.factors: dict[str, Factors] = {}

    def get(self, name: str, shape: tuple[int, int], dense: torch.Tensor) -> Factors:
        """The factors of matrix ``name`` whose dense weight (``shape``, on its compute device) is ``dense``."""
        if name not in self.factors:
            if self.lowrank is None:
                raise SieveError(f"{name} is factorised, but no low-rank primitive was given")
            stats = self.stats.get(name, MatrixStats())
            cov = self.lowrank.covariance_of(stats.general.hessian if stats.general is not None else None,
                                             stats.task.hessian if stats.task is not None else None)
            found = factorize(dense, cov, self.lowrank.damp, break_even_rank(*shape))
            self.factors[name] = Factors(found.a.float(), found.b.float(), found.sigma, found.energy)
        return self.factors[name]
