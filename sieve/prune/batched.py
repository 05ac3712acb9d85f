"""Several candidates' pruned weights at once, for a forward that evaluates them side by side.

:class:`CandidateWeights` holds, for every group of same-shaped matrices, one ``(G, K, out, in)``
tensor: slot ``c`` of member ``g`` is that matrix pruned as candidate ``c`` prunes it
(:mod:`sieve.models.batched` runs a forward over all slots). Writing ``K`` candidates is one
elementwise pass per group, the :mod:`~sieve.prune.pruner`'s threshold rule with each (member,
candidate)'s thresholds gathered from a per-group table of every precomputed level,

    slot_{g,c} = level index of member g in candidate c      (0: dense, a keep-everything threshold)
    W[g, c] = D_g ⊙ keep(S_g, s*[g, slot_{g,c}], c*[g, slot_{g,c}])

so the host sends one small integer tensor per candidate group and the GPU does the rest: two small
gathers and the pruner's threshold kernel (:mod:`~sieve.prune.threshold`) over ``(G, K, out, in)``.
The weights are those of :class:`~sieve.prune.pruner.ModelPruner` bit for bit (the same float32 products and
comparisons per element; tested). Mask-only scoring methods with unstructured levels only: N:M
patterns and low-rank factors are written by the one-candidate path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.primitives.base import DENSE
from sieve.prune.allocation import Allocation
from sieve.prune.pruner import ModelPruner
from sieve.prune.threshold import KEEP_ALL, threshold_mask_into


def gathered_thresholds(score_table: torch.Tensor, column_table: torch.Tensor,
                        slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s*, c*)`` of every (member, candidate): ``(G, K, rows, 1)`` each, from ``(G, L, rows)`` tables
    of every level and ``(G, K)`` level indices ``slots``."""
    index = slots.unsqueeze(-1).expand(-1, -1, score_table.shape[-1])
    return (torch.gather(score_table, 1, index).unsqueeze(-1), torch.gather(column_table, 1, index).unsqueeze(-1))


@dataclass
class _Group:
    """Same-shaped matrices: dense weights, factors and every level's thresholds, and ``K`` slots."""

    names: list[str]
    dense: torch.Tensor  # (G, rows, cols)
    factor: torch.Tensor  # (G, 1, cols) float32
    score_table: torch.Tensor  # (G, L, rows) float32; level 0 keeps everything (KEEP_ALL)
    column_table: torch.Tensor  # (G, L, rows) int32
    level_slot: list[dict[int, int]]  # per member: prune count k → its index in the tables
    weights: torch.Tensor  # (G, K, rows, cols): what the candidates' forward reads


def unsupported(pruner: ModelPruner) -> str | None:
    """Why ``pruner``'s matrices cannot be written for several candidates at once, or ``None``."""
    if pruner.mode != "in_place":
        return "the pruner computes weights on the fly"
    if pruner.method is None or not pruner.method.mask_only:
        return "the scoring method is not a per-weight score (mask-only)"
    return None


class CandidateWeights:
    """``candidates`` slots of pruned weights for every matrix of ``pruner`` (sharing its dense copy,
    factors and thresholds, which :meth:`ModelPruner.precompute_levels` must have filled for every
    level a search can choose)."""

    def __init__(self, pruner: ModelPruner, candidates: int) -> None:
        reason = unsupported(pruner)
        if reason is not None:
            raise SieveError(f"candidates cannot share a forward: {reason}")
        if candidates < 1:
            raise SieveError(f"candidates per forward must be at least 1, got {candidates}")
        self.pruner, self.candidates = pruner, candidates
        by_shape: dict[tuple, list[Matrix]] = {}
        for m in pruner.matrices:
            dense = pruner.dense[m.name]
            by_shape.setdefault((m.shape, dense.dtype, str(dense.device)), []).append(m)
        self.groups = [self._group(members) for members in by_shape.values()]
        self.group_of = {name: (group, i) for group in self.groups for i, name in enumerate(group.names)}
        self._slot_of: dict[tuple, int] = {}

    def _group(self, members: list[Matrix]) -> _Group:
        pruner = self.pruner
        names = [m.name for m in members]
        stack = pruner.stacks.get(names[0])
        if stack is not None and stack.names == names:
            dense, factor = stack.dense, stack.factor
        else:
            dense = torch.stack([pruner.dense[n] for n in names])
            factor = torch.stack([pruner.factor[n] for n in names]).unsqueeze(1)
        rows, device = dense.shape[1], dense.device
        levels = [sorted(pruner.thresholds.get(n, {})) for n in names]
        width = 1 + max((len(ks) for ks in levels), default=0)
        score_table = torch.full((len(names), width, rows), KEEP_ALL, device=device)
        column_table = torch.zeros((len(names), width, rows), dtype=torch.int32, device=device)
        level_slot = []
        for g, (name, ks) in enumerate(zip(names, levels, strict=True)):
            if ks:
                score_table[g, 1:1 + len(ks)] = torch.stack([pruner.thresholds[name][k][0][:, 0] for k in ks])
                column_table[g, 1:1 + len(ks)] = torch.stack([pruner.thresholds[name][k][1][:, 0] for k in ks])
            level_slot.append({0: 0, **{k: j for j, k in enumerate(ks, start=1)}})
        weights = torch.empty((len(names), self.candidates, *dense.shape[1:]), dtype=dense.dtype, device=device)
        return _Group(names, dense, factor, score_table, column_table, level_slot, weights)

    def weights_of(self) -> dict[str, torch.Tensor]:
        """Each matrix's ``(K, out, in)`` slots (views: they follow every :meth:`write`)."""
        return {name: group.weights[i] for name, (group, i) in self.group_of.items()}

    def slots(self, allocations: Sequence[Allocation]) -> list[np.ndarray]:
        """Per group, the ``(G, K)`` level indices of ``allocations`` (the last one repeated into the
        unused slots, so a partial group writes valid weights everywhere)."""
        if not 1 <= len(allocations) <= self.candidates:
            raise SieveError(f"{len(allocations)} candidates for {self.candidates} slots")
        out = [np.empty((len(g.names), self.candidates), dtype=np.int64) for g in self.groups]
        for c, allocation in enumerate(allocations):
            for group, table in zip(self.groups, out, strict=True):
                for g, name in enumerate(group.names):
                    table[g, c] = self._slot(group, g, name, allocation)
        for table in out:
            table[:, len(allocations):] = table[:, len(allocations) - 1:len(allocations)]
        return out

    def _slot(self, group: _Group, g: int, name: str, allocation: Allocation) -> int:
        key = (name, allocation.sparsity.get(name, 0.0), allocation.pattern_of(name), allocation.ranks.get(name))
        slot = self._slot_of.get(key)
        if slot is None:
            level = self.pruner.state_of(self.pruner.by_name[name], allocation)
            slot = 0 if level == DENSE else group.level_slot[g].get(level.k) if level.thresholded else None
            if slot is None:
                raise SieveError(f"{name}: level {level} has no precomputed unstructured threshold; "
                                 "candidates cannot share a forward")
            self._slot_of[key] = slot
        return slot

    def write(self, allocations: Sequence[Allocation]) -> None:
        """Slots ``0 … len(allocations) − 1`` ← the pruned weights of ``allocations`` (the rest: the last
        one again)."""
        tables = self.slots(allocations)
        flat = torch.from_numpy(np.concatenate([t.ravel() for t in tables]))
        device = self.groups[0].dense.device
        if device.type == "cuda":  # from pinned memory: a copy from pageable memory would wait for the GPU
            flat = flat.pin_memory().to(device, non_blocking=True)
        at = 0
        for group, table in zip(self.groups, tables, strict=True):
            slots = flat[at:at + table.size].view(table.shape)
            at += table.size
            columns = self.pruner.column_index(group.dense.shape[-1], device)
            t_score, t_col = gathered_thresholds(group.score_table, group.column_table, slots)
            threshold_mask_into(group.weights, group.dense.unsqueeze(1), group.factor.unsqueeze(1), t_score, t_col,
                                columns)
