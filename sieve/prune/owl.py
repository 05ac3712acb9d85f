"""OWL (Yin et al., 2024): non-uniform layerwise sparsity from outlier ratios.

Per decoder block ``l``, take the score ``S = |W| · f`` of all its matrices (the method's own score:
Wanda's for ``wanda``, the fused score for ``fused``) and its outlier ratio
``D_l = #{S > M · mean(S)} / #S``. With ``r = (D − min D) / (max D − min D) · 2λ``, the block keeps
density ``r_l − mean(r) + (1 − B)``, i.e. sparsity ``B − r_l + mean(r)``: blocks with more outliers
are pruned less, and the mean (hence the budget, for equal-size blocks) is preserved.
Defaults ``M = 5``, ``λ = 0.08`` as in the paper.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sieve.models.matrix import Matrix
from sieve.prune.allocation import Allocation
from sieve.scores.base import ScoringMethod
from sieve.stats import MatrixStats


def outlier_ratios(
    matrices: Sequence[Matrix], method: ScoringMethod, stats: Mapping[str, MatrixStats], m: float = 5.0
) -> dict[int, float]:
    by_block: dict[int, list[Matrix]] = defaultdict(list)
    for mat in matrices:
        by_block[mat.block].append(mat)
    ratios = {}
    for block, mats in sorted(by_block.items()):
        scores = torch.cat([method.scores(x.weight, stats.get(x.name, MatrixStats())).flatten() for x in mats])
        ratios[block] = float((scores > m * scores.mean()).float().mean())
    return ratios


def owl_block_sparsity(ratios: Mapping[int, float], budget: float, lam: float = 0.08) -> dict[int, float]:
    blocks = sorted(ratios)
    d = np.array([ratios[b] for b in blocks])
    spread = d.max() - d.min()
    r = (d - d.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(d)
    sparsity = np.clip(budget - r + r.mean(), 0.0, 0.99)
    return {b: float(s) for b, s in zip(blocks, sparsity)}


def owl_allocation(
    matrices: Sequence[Matrix],
    method: ScoringMethod,
    stats: Mapping[str, MatrixStats],
    budget: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
) -> Allocation:
    per_block = owl_block_sparsity(outlier_ratios(matrices, method, stats, m), budget, lam)
    return Allocation({x.name: per_block[x.block] for x in matrices})
