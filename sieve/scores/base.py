"""The scoring-method interface and its registry.

Most methods score a weight by its magnitude times a per-input-channel factor,
``S_ij = |W_ij| · f_j`` (magnitude: ``f = 1``; Wanda: ``f_j = ‖X_j‖``; fused: see
:mod:`sieve.scores.fused`). Such *mask-only* methods expose :meth:`ScoringMethod.column_factor`,
which lets the search re-prune a matrix at any level from the dense weight without re-sorting or
storing a level database. Methods that also update the kept weights (SparseGPT) override
:meth:`ScoringMethod.prune` and set ``mask_only = False``.

Each method is a pydantic model owning its parameters (``{"name": "wanda", "source": "task"}``);
:data:`MethodSpec` is the config field type that builds one from a name or a mapping.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch

from sieve.config import Frozen
from sieve.primitives.mask import UNSTRUCTURED, Pattern, mask_from_scores
from sieve.registry import Registry
from sieve.stats import MatrixStats

Source = Literal["general", "task"]


class ScoringMethod(Frozen, ABC):
    """Turns a weight and its calibration statistics into importance scores (higher = keep)."""

    name: str
    needs_hessian: ClassVar[bool] = False
    mask_only: ClassVar[bool] = True

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources this method reads; statistics are collected only for these."""
        return ()

    @abstractmethod
    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        """Per-input-channel factor ``f`` (float32, length ``cols``) with ``S = |W| · f``."""

    def scores(self, weight: torch.Tensor, stats: MatrixStats) -> torch.Tensor:
        factor = self.column_factor(weight.shape[1], stats).to(weight.device)
        return weight.float().abs() * factor

    def prune(
        self, weight: torch.Tensor, stats: MatrixStats, sparsity: float, pattern: Pattern = UNSTRUCTURED
    ) -> torch.Tensor:
        """The pruned weight (a new tensor, same dtype): ``W ⊙ mask(S, sparsity, pattern)``."""
        keep = mask_from_scores(self.scores(weight, stats), sparsity, pattern)
        return weight * keep

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class OneSource(ScoringMethod, ABC):
    """A method reading the statistics of one calibration source (``general`` or ``task``)."""

    source: Source = "general"

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,)


SCORES: Registry[ScoringMethod] = Registry("scoring method", "sieve.scores")
MethodSpec = SCORES.field(ScoringMethod)


def get_method(spec: Any) -> ScoringMethod:
    """A method from a name or ``{"name": ..., **parameters}``; a bad spec is one error line."""
    from pydantic import ValidationError

    from sieve.config import one_line
    from sieve.errors import SieveError

    try:
        return SCORES.build(spec)
    except ValueError as exc:
        raise SieveError(one_line(exc) if isinstance(exc, ValidationError) else str(exc)) from None
