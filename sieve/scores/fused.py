"""Task-aware fused score: keep what the task needs without forgetting general text.

The seed paper (arXiv 2510.22489) gives the idea — separate importance on general and task
calibration, shared vs task-exclusive channels, fusion — but no formula. sieve's definition:

Let ``g_j`` and ``t_j`` be the RMS input activation of channel ``j`` on general and on task text.
Normalise each by its mean over the matrix's channels, so the two sources are comparable whatever
their scale::

    ĝ_j = g_j / mean(g),    t̂_j = t_j / mean(t),    ρ_j = ln(t̂_j / ĝ_j)

Channel ``j`` is **task-exclusive** when ``ρ_j > ln τ`` (it is at least ``τ`` times more active,
relative to its matrix, on the task than on general text); all others are **shared**. The fused
channel factor is::

    f_j = β · t̂_j                  if j is task-exclusive   (protected)
    f_j = ĝ_j^(1−α) · t̂_j^α        otherwise                 (both sources weigh in)

and the score is ``S_ij = |W_ij| · f_j``. Defaults: ``τ = 2``, ``α = 0.5`` (geometric mean),
``β = 2``. ``α = 0`` with ``β`` ignored reduces to general-calibrated Wanda, ``α = 1`` to
task-calibrated Wanda; those are the ablation's two ends. A geometric rather than arithmetic mean
makes a channel that is quiet on either source rank low, and the protection keeps the channels the
task routes through alive even when general text barely uses them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sieve.scores.base import SCORES, ScoringMethod
from sieve.stats import MatrixStats

_EPS = 1e-12


def fused_factor(
    general_norm: torch.Tensor, task_norm: torch.Tensor, *, tau: float = 2.0, alpha: float = 0.5, beta: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, exclusive)`` for one matrix from its per-channel general and task norms."""
    g = general_norm.double()
    t = task_norm.double()
    g_hat = g / g.mean().clamp_min(_EPS) + _EPS
    t_hat = t / t.mean().clamp_min(_EPS) + _EPS
    exclusive = torch.log(t_hat / g_hat) > torch.log(torch.tensor(tau, dtype=torch.float64))
    shared = g_hat.pow(1.0 - alpha) * t_hat.pow(alpha)
    factor = torch.where(exclusive, beta * t_hat, shared)
    return factor.float(), exclusive


@SCORES.register
class Fused(ScoringMethod):
    name: Literal["fused"] = "fused"
    tau: float = Field(2.0, ge=1.0, description="task-exclusive when t̂/ĝ > tau")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the task in the geometric mean")
    beta: float = Field(2.0, ge=1.0, description="protection factor of task-exclusive channels")

    @property
    def sources(self) -> tuple[str, ...]:
        return ("general", "task")

    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        factor, _ = fused_factor(
            stats.source("general").norm, stats.source("task").norm, tau=self.tau, alpha=self.alpha, beta=self.beta
        )
        return factor
