"""Magnitude pruning: ``S_ij = |W_ij|``; needs no calibration data."""

from __future__ import annotations

import torch

from sieve.scores.base import ScoringMethod, register_method
from sieve.stats import MatrixStats


@register_method
class Magnitude(ScoringMethod):
    name = "magnitude"

    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        return torch.ones(cols)
