"""Apply allocations in place, fast, and restore the dense weights exactly.

:class:`ModelPruner` is the thin stateful shell around the pure mask functions. It keeps one dense
copy of every prunable matrix (same device and dtype, so restoring is a bit-exact ``copy_``) and,
for mask-only methods (``S = |W| · f``), the per-channel factor ``f``. Re-pruning at another level
never re-sorts: for each level in a registered grid it precomputes each row's threshold key,

    key_ij = bits(S_ij) · cols + j          (float32 bits of S ≥ 0 are monotone in S)

so that the ``k`` lowest keys of a row are exactly the ``k`` weights a stable sort would prune. The
``k``-th key is stored split into its score ``s*`` and column ``c*``; applying level ``k`` is then
one elementwise pass over the matrix,

    keep_ij = S_ij > s*_i  or  (S_ij = s*_i and j > c*_i),     W = W_dense ⊙ keep

with no int64 keys materialised: no level database, and memory is the model, its dense copy and
``rows × levels`` thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import torch

from sieve.models.matrix import Matrix
from sieve.primitives.mask import UNSTRUCTURED, Pattern, mask_from_scores, row_prune_count
from sieve.prune.allocation import Allocation
from sieve.scores.base import ScoringMethod
from sieve.stats import MatrixStats

log = logging.getLogger(__name__)


def score_keys(dense: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys ordering a row's weights like a stable sort of ``|W| · f``."""
    scores = dense.float().abs() * factor
    cols = scores.shape[1]
    bits = scores.view(torch.int32).to(torch.int64)
    return bits * cols + torch.arange(cols, device=scores.device)


class ModelPruner:
    """Prunes ``matrices`` of a live model in place according to allocations."""

    def __init__(self, matrices: Sequence[Matrix], method: ScoringMethod, stats: Mapping[str, MatrixStats]) -> None:
        self.matrices = list(matrices)
        self.method = method
        self.stats = stats
        self.dense = {m.name: m.weight.detach().clone() for m in self.matrices}
        self.factor: dict[str, torch.Tensor] = {}
        if method.mask_only:
            for m in self.matrices:
                self.factor[m.name] = method.column_factor(m.shape[1], stats.get(m.name, MatrixStats())).to(
                    m.weight.device
                )
        self.thresholds: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.current: dict[str, tuple[int, Pattern]] = {m.name: (0, UNSTRUCTURED) for m in self.matrices}
        self._columns: dict[tuple[int, str], torch.Tensor] = {}

    def precompute_levels(self, row_counts: Mapping[str, Iterable[int]]) -> None:
        """Precompute thresholds for the given per-row prune counts of each matrix (mask-only)."""
        if not self.method.mask_only:
            return
        for name, counts in row_counts.items():
            counts = sorted({int(k) for k in counts if k > 0})
            if not counts:
                continue
            keys = score_keys(self.dense[name], self.factor[name])
            cols = keys.shape[1]
            kth = torch.sort(keys, dim=1).values[:, [k - 1 for k in counts]]
            score = (kth // cols).to(torch.int32).view(torch.float32)
            column = (kth % cols).to(torch.int32)
            self.thresholds[name] = {
                k: (score[:, i].contiguous().unsqueeze(1), column[:, i].contiguous().unsqueeze(1))
                for i, k in enumerate(counts)
            }
            del keys, kth

    def apply(self, allocation: Allocation) -> None:
        """Prune every matrix to its allocated sparsity (unlisted matrices are restored dense)."""
        for m in self.matrices:
            sparsity = allocation.sparsity.get(m.name, 0.0)
            pattern = allocation.pattern_of(m.name)
            k = round(sparsity * pattern.m) if pattern.structured else row_prune_count(m.shape[1], sparsity)
            self._apply_one(m, k, pattern if k else UNSTRUCTURED, sparsity)

    def _apply_one(self, m: Matrix, k: int, pattern: Pattern, sparsity: float) -> None:
        if self.current[m.name] == (k, pattern):
            return
        dense = self.dense[m.name]
        w = m.weight
        if k == 0:
            w.copy_(dense)
        elif not self.method.mask_only:
            w.copy_(self.method.prune(dense, self.stats.get(m.name, MatrixStats()), sparsity, pattern))
        elif not pattern.structured and k in self.thresholds.get(m.name, {}):
            t_score, t_col = self.thresholds[m.name][k]
            scores = dense.float().abs_() if dense.dtype != torch.float32 else dense.abs()
            scores.mul_(self.factor[m.name])
            keep = scores > t_score
            keep |= (scores == t_score) & (self._column_index(m.shape[1], dense.device) > t_col)
            torch.mul(dense, keep, out=w) if w.is_contiguous() else w.copy_(dense * keep)
        else:
            scores = dense.float().abs() * self.factor[m.name]
            w.copy_(dense * mask_from_scores(scores, sparsity, pattern))
        self.current[m.name] = (k, pattern)

    def _column_index(self, cols: int, device: torch.device) -> torch.Tensor:
        key = (cols, str(device))
        if key not in self._columns:
            self._columns[key] = torch.arange(cols, device=device, dtype=torch.int32)
        return self._columns[key]

    def restore(self) -> None:
        """Bit-identical dense weights back in place."""
        for m in self.matrices:
            if self.current[m.name][0]:
                m.weight.copy_(self.dense[m.name])
                self.current[m.name] = (0, UNSTRUCTURED)


def achieved_sparsity(matrices: Sequence[Matrix]) -> float:
    """Parameter-weighted fraction of zeros across ``matrices`` as they are now."""
    zeros = sum(int((m.weight == 0).sum()) for m in matrices)
    return zeros / sum(m.numel for m in matrices)
