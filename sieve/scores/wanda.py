"""Wanda (Sun et al., 2023): ``S_ij = |W_ij| · ‖X_j‖₂``.

``‖X_j‖`` is the norm of input channel ``j`` over the calibration tokens of one source (``general``
by default, ``task`` for task-calibrated Wanda). We use the root-mean-square
``sqrt(Σ_t x_tj² / n)``; it differs from the plain norm by a constant per matrix, which does not
change any row's ranking.
"""

from __future__ import annotations

from typing import Literal

import torch

from sieve.scores.base import SCORES, OneSource
from sieve.stats import MatrixStats


@SCORES.register
class Wanda(OneSource):
    name: Literal["wanda"] = "wanda"

    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        return stats.source(self.source).norm
