"""SparseGPT (Frantar & Alistarh, 2023): OBS mask selection with a weight update.

With ``H = XᵀX + λI`` (``λ = 0.01 · mean(diag H)``) and ``U`` the upper Cholesky factor of
``H⁻¹``, columns are processed in blocks of 128. Within a block the mask prunes the smallest
``w² / U_ii²`` (per row: ``int(cols·s)`` of the row overall, chosen block by block as in the
reference implementation's row-wise variant; ``N:M``: the ``N`` smallest of each ``M`` group), and
column by column the error ``e = (w − q) / U_ii`` is propagated, ``W[:, i:] −= e · U[i, i:]``,
with lazy block updates. Because kept weights change, the result is not a function of a mask
alone (``mask_only = False``): the search cannot re-prune it at another level from the dense
weight, so search spaces use magnitude, wanda or fused.
"""

from __future__ import annotations

from typing import Literal

import torch

from sieve.errors import SieveError
from sieve.primitives.mask import UNSTRUCTURED, Pattern, row_prune_count
from sieve.scores.base import SCORES, OneSource
from sieve.stats import MatrixStats

BLOCK = 128


def _inverse_cholesky(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True), dead


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern: Pattern = UNSTRUCTURED
) -> torch.Tensor:
    """Pruned copy of ``weight`` (out × in); exactly ``int(cols·s)`` zeros per row (unstructured)."""
    w = weight.double().clone()
    rows, cols = w.shape
    u, dead = _inverse_cholesky(hessian.to(w.device))
    w[:, dead] = 0
    k_row = row_prune_count(cols, sparsity)
    # Row-wise exactness: choose each row's pruned set from its OBS saliency over all columns,
    # computed on the fly block by block (SparseGPT's adaptive mask selection restricted per row).
    pruned_so_far = torch.zeros(rows, dtype=torch.long, device=w.device)
    keep_all = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        w1 = w[:, start:end].clone()
        u1 = u[start:end, start:end]
        err1 = torch.zeros_like(w1)
        saliency = w1.pow(2) / torch.diag(u1).pow(2).unsqueeze(0)
        keep1 = torch.ones_like(w1, dtype=torch.bool)
        if pattern.structured:
            groups = saliency.reshape(rows, -1, pattern.m)
            low = torch.sort(groups, dim=-1, stable=True).indices[..., : pattern.n]
            keep1.view(rows, -1, pattern.m).scatter_(-1, low, False)
        elif k_row:
            # Proportional share of the row budget for this block, exact overall via the remainder.
            target = (k_row * end) // cols
            take = (target - pruned_so_far).clamp(min=0, max=end - start)
            order = torch.sort(saliency, dim=1, stable=True).indices
            ranks = torch.empty_like(order)
            ranks.scatter_(1, order, torch.arange(end - start, device=w.device).expand(rows, -1))
            keep1 = ranks >= take.unsqueeze(1)
            pruned_so_far += take
        for i in range(end - start):
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros_like(col))
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, start:end] = w1
        keep_all[:, start:end] = keep1
        w[:, end:] -= err1 @ u[start:end, end:]
    w[~keep_all] = 0
    return w.to(weight.dtype)


@SCORES.register
class SparseGPT(OneSource):
    name: Literal["sparsegpt"] = "sparsegpt"
    needs_hessian = True
    mask_only = False

    def column_factor(self, cols: int, stats: MatrixStats) -> torch.Tensor:
        hessian = stats.source(self.source).hessian
        return (torch.diag(hessian).float().clamp_min(0)).sqrt() if hessian is not None else torch.ones(cols)

    def prune(
        self, weight: torch.Tensor, stats: MatrixStats, sparsity: float, pattern: Pattern = UNSTRUCTURED
    ) -> torch.Tensor:
        hessian = stats.source(self.source).hessian
        if hessian is None:
            raise SieveError("sparsegpt needs Hessian statistics (collect with hessian=True)")
        return sparsegpt_prune(weight, hessian, sparsity, pattern)
