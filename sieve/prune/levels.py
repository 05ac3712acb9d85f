"""The level table: each matrix's precomputed per-row thresholds, one per unstructured mask level.

For a mask-only method (``S = |W| · f``) re-pruning at another level never re-sorts: for each level
in a registered grid the table holds each row's threshold key,

    key_ij = bits(S_ij) · cols + j          (float32 bits of S ≥ 0 are monotone in S)

so that the ``k`` lowest keys of a row are exactly the ``k`` weights a stable sort would prune. The
``k``-th key is stored split into its score ``s*`` and column ``c*``; applying level ``k`` is then
one elementwise pass over the matrix (:mod:`~sieve.prune.threshold`),

    keep_ij = S_ij > s*_i  or  (S_ij = s*_i and j > c*_i),     W = W_dense ⊙ keep

with no int64 keys materialised: memory is ``rows × levels`` thresholds. A dense matrix written by
the same kernel gets the keep-everything threshold (:data:`~sieve.prune.threshold.KEEP_ALL`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sieve.primitives.base import DENSE, Level
from sieve.prune.threshold import KEEP_ALL, score_keys

Threshold = tuple[torch.Tensor, torch.Tensor]
"""``(s*, c*)``: each row's threshold score (float32) and column (int32), both ``(rows, 1)``."""


class LevelTable:
    """Matrix name → per-row prune count ``k`` → :data:`Threshold`; plus the keep-everything
    thresholds and column indices the kernel reads (made once per shape and device)."""

    def __init__(self) -> None:
        self.thresholds: dict[str, dict[int, Threshold]] = {}
        self._keep_all: dict[tuple[int, str], Threshold] = {}
        self._columns: dict[tuple[int, str], torch.Tensor] = {}

    def precompute(self, name: str, dense: torch.Tensor, factor: torch.Tensor, counts: Iterable[int]) -> None:
        """The thresholds of ``dense`` (on its compute device) at each per-row prune count ``k > 0``."""
        counts = sorted({int(k) for k in counts if k > 0})
        if not counts:
            return
        keys = score_keys(dense, factor)
        cols = keys.shape[1]
        kth = torch.sort(keys, dim=1).values[:, [k - 1 for k in counts]]
        score = (kth // cols).to(torch.int32).view(torch.float32)
        column = (kth % cols).to(torch.int32)
        self.thresholds[name] = {
            k: (score[:, i].contiguous().unsqueeze(1), column[:, i].contiguous().unsqueeze(1))
            for i, k in enumerate(counts)
        }

    def holds(self, name: str, level: Level) -> bool:
        """Whether ``level`` of matrix ``name`` is a precomputed threshold."""
        return level.thresholded and level.k in self.thresholds.get(name, {})

    def threshold(self, name: str, level: Level, rows: int, device: torch.device) -> Threshold:
        """The threshold that writes ``level`` (dense: keep everything) of a ``rows``-row matrix."""
        if level != DENSE:
            return self.thresholds[name][level.k]
        key = (rows, str(device))
        if key not in self._keep_all:
            self._keep_all[key] = (torch.full((rows, 1), KEEP_ALL, device=device),
                                   torch.zeros((rows, 1), dtype=torch.int32, device=device))
        return self._keep_all[key]

    def column_index(self, cols: int, device: torch.device) -> torch.Tensor:
        """``0 … cols − 1`` (int32) on ``device``, made once: the ``j`` of the threshold rule."""
        key = (cols, str(device))
        if key not in self._columns:
            self._columns[key] = torch.arange(cols, device=device, dtype=torch.int32)
        return self._columns[key]
