"""The pruning primitive: ``(scores, sparsity, pattern) -> mask``.

Comparison group = one output row (Wanda): a row of ``cols`` weights at sparsity ``s`` loses exactly
``k = int(cols · s)`` weights, the ``k`` lowest-scoring ones, so every row, and therefore the matrix,
is exact to one weight per row. Ties are broken by column index (a stable sort), which keeps masks
deterministic even for quantised weights where many magnitudes coincide.

``N:M``: within each row, in each group of ``M`` consecutive input columns, the ``N`` lowest scores
are pruned; the sparsity is then ``N / M`` by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import field_validator

from sieve.errors import SieveError
from sieve.primitives.base import PRIMITIVES, Primitive


@dataclass(frozen=True, order=True)
class Pattern:
    """``unstructured`` (``m == 0``) or ``N:M`` (prune ``n`` of every ``m`` consecutive inputs)."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str | Pattern | None) -> Pattern:
        if isinstance(text, Pattern):
            return text
        if text is None or text in ("", "unstructured", "0:0"):
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
        if not match:
            raise SieveError(f"pattern {text!r} is neither 'unstructured' nor N:M such as '2:4'")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise SieveError(f"pattern {text!r} needs 0 < N < M")
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return self.n / self.m if self.m else 0.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"

    def check(self, name: str, cols: int) -> None:
        if self.m and cols % self.m:
            raise SieveError(f"pattern {self} does not divide {name}: {cols} input columns")


UNSTRUCTURED = Pattern()


@PRIMITIVES.register
class Mask(Primitive):
    """Zero weights: per output row the lowest-scoring ones (``unstructured``), or ``N`` of every
    ``M`` consecutive inputs (``N:M``, e.g. ``2:4``)."""

    name: Literal["mask"] = "mask"
    pattern: str = "unstructured"

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        try:
            return str(Pattern.parse(value))
        except SieveError as exc:
            raise ValueError(str(exc)) from None

    @property
    def parsed(self) -> Pattern:
        return Pattern.parse(self.pattern)


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise SieveError(f"{what} must be a fraction in [0, 1), got {sparsity}")
    return sparsity


def row_prune_count(cols: int, sparsity: float) -> int:
    """Weights removed per row at ``sparsity``: ``int(cols · s)`` with a guard for float error."""
    return min(cols, int(cols * sparsity + 1e-9))


def prune_order(scores: torch.Tensor) -> torch.Tensor:
    """Column indices of each row sorted from least to most important (stable)."""
    return torch.sort(scores, dim=1, stable=True).indices


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern = UNSTRUCTURED) -> torch.Tensor:
    """Boolean keep-mask of ``scores`` (out × in); ``True`` keeps a weight.

    Unstructured: the ``int(cols · sparsity)`` lowest scores of each row are pruned.
    ``N:M``: ``sparsity`` must be 0 (dense) or ``N/M``; the ``N`` lowest of each group of ``M`` go.
    """
    rows, cols = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pattern.structured:
        if sparsity == 0:
            return keep
        if abs(sparsity - pattern.sparsity) > 1e-9:
            raise SieveError(f"pattern {pattern} implies sparsity {pattern.sparsity}, got {sparsity}")
        pattern.check("matrix", cols)
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        lowest = torch.sort(groups, dim=-1, stable=True).indices[..., : pattern.n]
        keep.view(rows, cols // pattern.m, pattern.m).scatter_(-1, lowest, False)
        return keep
    k = row_prune_count(cols, sparsity)
    if k:
        keep.scatter_(1, prune_order(scores)[:, :k], False)
    return keep
