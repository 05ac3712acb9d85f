"""The on-the-fly writer: each matrix's weight computed from its dense original at every access.

The model keeps its dense weights; a ``torch.nn.utils.parametrize`` parametrisation computes each
live matrix's weight at every forward for the pruner's current level of it — no second copy
(memory ≈ 1×), one fused elementwise pass per matrix per forward.

**Graph-safe** (a mask-only method): every live weight is computed by the threshold kernel from
thresholds held in one fixed buffer per matrix, which :meth:`LiveWriter.refill` overwrites (a dense
matrix gets the keep-everything threshold). A forward then launches the same kernels on the same
storage whatever the candidate, so a CUDA graph captured once replays every candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.nn.utils import parametrize

from sieve.models.matrix import Matrix
from sieve.prune.levels import Threshold

WeightAt = Callable[[str, torch.Tensor], torch.Tensor]
"""``(name, dense (out, in)) -> the weight at the matrix's current level``."""


class _LiveWeight(torch.nn.Module):
    """Parametrisation: the module's weight, computed from its dense original at every access."""

    def __init__(self, weight_at: WeightAt, name: str, transposed: bool) -> None:
        super().__init__()
        self.weight_at, self.name, self.transposed = weight_at, name, transposed

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        weight = self.weight_at(self.name, original.t() if self.transposed else original)
        return weight.t() if self.transposed else weight


class LiveWriter:
    """Parametrises the weight of each of ``matrices`` by ``weight_at``; their dense originals go
    into ``dense`` (as ``(out, in)`` views). ``thresholds``: the graph-safe buffers' first contents,
    per matrix (none: not graph-safe)."""

    def __init__(self, matrices: Sequence[Matrix], weight_at: WeightAt, dense: dict[str, torch.Tensor],
                 thresholds: Mapping[str, Threshold] | None = None) -> None:
        self.matrices = list(matrices)
        self.names = {m.name for m in self.matrices}
        self.thresholds: dict[str, Threshold] = {name: tuple(t.clone() for t in pair)
                                                 for name, pair in sorted((thresholds or {}).items())}
        for m in self.matrices:
            parametrize.register_parametrization(m.module, "weight", _LiveWeight(weight_at, m.name, m.transposed),
                                                 unsafe=True)
            original = m.module.parametrizations.weight.original.detach()
            dense[m.name] = original.t() if m.transposed else original
        self._released = False

    def refill(self, names: Sequence[str], threshold_of: Callable[[str], Threshold]) -> None:
        """The graph-safe buffers of ``names`` ← their current levels' thresholds (one multi-tensor copy)."""
        names = [n for n in names if n in self.thresholds]
        if names:
            pairs = [threshold_of(name) for name in names]
            torch._foreach_copy_([b for name in names for b in self.thresholds[name]], [t for p in pairs for t in p])

    def release(self) -> None:
        """The model's plain modules back (no parametrisation), with their dense weights."""
        if not self._released:
            for m in self.matrices:
                parametrize.remove_parametrizations(m.module, "weight", leave_parametrized=False)
            self._released = True
