"""One model, ``K`` candidates per forward: the pruned linears hold ``K`` weight sets.

A small model's forward on a search stage's few hundred tokens is launch-bound: every kernel is tiny
and the GPU waits for the next one. Candidates of one search differ only in the weights of their
pruned matrices, and every other operation of a decoder (embeddings, norms, rotary positions,
attention, the vocabulary projection) treats each row of the batch on its own. So ``K`` candidates
can share one forward: the batch is the stage's rows ``K`` times, candidate-major (rows
``c·n … (c+1)·n − 1`` are candidate ``c``, :class:`~sieve.scoring.plan.ScoringPlan` with
``copies=K``), and each pruned ``Linear`` is replaced by a :class:`CandidateLinear` that multiplies
candidate ``c``'s rows by candidate ``c``'s weights,

    y_c = x_c W_cᵀ + b        (one batched matmul over c = 0 … K−1)

— the kernels of one forward for ``K`` candidates. The output projection (the vocabulary head, the
same weight for all) is a batched matmul over candidates too: as one matmul over all rows, a row's
bits could depend on where it falls in the kernel's tiles (a CPU GEMM's tail rows do). So a
candidate's result does not depend on the other candidates of its forward or on its position among
them (the same kernels on the same shapes; tested); it may differ in the last bits from a
one-candidate forward, whose matmuls have other shapes, so the number of candidates per forward is
part of a search's identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sieve.models.matrix import Matrix


@dataclass
class CandidateCount:
    """How many candidates the next forward carries (shared by every :class:`CandidateLinear` of a
    model, so one assignment switches them all)."""

    value: int = 1


class CandidateLinear(nn.Module):
    """A ``Linear`` whose weight is one of ``K`` candidates' per block of rows: ``weights`` is
    ``(K_max, out, in)`` (for a weight all candidates share, its expanded view) and a forward of
    ``count.value = K`` candidates reads ``weights[:K]``."""

    def __init__(self, linear: nn.Linear, weights: torch.Tensor, count: CandidateCount) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weights", weights, persistent=False)
        self.bias = linear.bias
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.count.value
        y = torch.bmm(x.reshape(k, -1, self.in_features), self.weights[:k].transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, candidates={self.weights.shape[0]}"


def parameter_count(model: nn.Module) -> int:
    """The parameters one candidate's forward multiplies by: every parameter once (tied ones once) and,
    for a :class:`CandidateLinear`, one candidate's weight (its ``K`` sets are buffers, and the vocabulary
    head's is a view of the tied embedding). On a plain model, ``sum(p.numel())`` over its parameters."""
    sizes = {(p.data_ptr(), tuple(p.shape)): p.numel() for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, CandidateLinear):
            one = module.weights[0]
            sizes[(one.data_ptr(), tuple(one.shape))] = one.numel()
    return sum(sizes.values())


def unsupported(matrices: Sequence[Matrix]) -> str | None:
    """Why these matrices cannot hold several candidates' weights, or ``None``: plain ``nn.Linear``
    modules only (not GPT-2's transposed ``Conv1D``, not an expert's slice of a 3-D tensor)."""
    for m in matrices:
        if m.expert is not None or type(m.module) is not nn.Linear:
            return f"{m.name} is a {type(m.module).__name__}{' expert' if m.expert is not None else ''}, not a Linear"
    return None


class CandidateModel:
    """``model`` with the modules of ``matrices`` swapped for :class:`CandidateLinear`\\ s reading
    ``weights[name]`` (``(K_max, out, in)`` each) until :meth:`restore`; ``count`` sets how many
    candidates a forward carries."""

    def __init__(self, model: nn.Module, matrices: Sequence[Matrix], weights: Mapping[str, torch.Tensor]) -> None:
        reason = unsupported(matrices)
        if reason is not None:
            raise ValueError(f"candidates cannot share a forward: {reason}")
        self.model = model
        self.count = CandidateCount()
        self._swapped: list[tuple[nn.Module, str, nn.Linear]] = []
        slots = next(iter(weights.values())).shape[0] if weights else 1
        for m in matrices:
            self._swap(m.name, CandidateLinear(m.module, weights[m.name], self.count))
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if type(head) is nn.Linear:
            name = next(n for n, module in model.named_modules() if module is head)
            shared = head.weight.detach().unsqueeze(0).expand(slots, -1, -1)
            self._swap(name, CandidateLinear(head, shared, self.count))

    def _swap(self, name: str, module: CandidateLinear) -> None:
        parent_name, _, attribute = name.rpartition(".")
        parent = self.model.get_submodule(parent_name)
        self._swapped.append((parent, attribute, getattr(parent, attribute)))
        setattr(parent, attribute, module)

    def restore(self) -> None:
        """The original ``Linear`` modules back (idempotent)."""
        for parent, attribute, linear in self._swapped:
            setattr(parent, attribute, linear)
        self._swapped.clear()
