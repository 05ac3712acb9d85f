"""Magnitude pruning: ``S_ij = |W_ij|``; needs no calibration data."""

from __future__ import annotations

from typing import Literal

import torch

from sieve.scores.base import SCORES, ScoringMethod
from sieve.stats import MatrixStats


@SCORES.register
class Magnitude(ScoringMethod):
    name: Literal["magnitude"] = "magnitude"

    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        return torch.ones(cols)
