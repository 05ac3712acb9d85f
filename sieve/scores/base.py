"""The scoring-method interface and registry.

Most methods score a weight by its magnitude times a per-input-channel factor,
``S_ij = |W_ij| · f_j`` (magnitude: ``f = 1``; Wanda: ``f_j = ‖X_j‖``; fused: see
:mod:`sieve.scores.fused`). Such *mask-only* methods expose :meth:`ScoringMethod.column_factor`,
which lets the search re-prune a matrix at any level from the dense weight without re-sorting or
storing a level database. Methods that also update the kept weights (SparseGPT) override
:meth:`ScoringMethod.prune` and set ``mask_only = False``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from sieve.errors import SieveError
from sieve.prune.mask import UNSTRUCTURED, Pattern, mask_from_scores
from sieve.stats import MatrixStats

SOURCES = ("general", "task")


class ScoringMethod(ABC):
    """Turns a weight and its calibration statistics into importance scores (higher = keep)."""

    name: ClassVar[str]
    needs_hessian: ClassVar[bool] = False
    mask_only: ClassVar[bool] = True

    def __init__(self, source: str = "general") -> None:
        if source not in SOURCES:
            raise SieveError(f"calibration source must be one of {SOURCES}, got {source!r}")
        self.source = source

    @property
    def sources(self) -> tuple[str, ...]:
        """Calibration sources this method reads; statistics are collected only for these."""
        return () if self.name == "magnitude" else (self.source,)

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
        return {"name": self.name, "source": self.source}


_METHODS: dict[str, Callable[..., ScoringMethod]] = {}


def register_method(cls: type[ScoringMethod]) -> type[ScoringMethod]:
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str, **options: Any) -> ScoringMethod:
    if name not in _METHODS:
        raise SieveError(f"unknown scoring method {name!r}; choose from {', '.join(available_methods())}")
    return _METHODS[name](**options)
