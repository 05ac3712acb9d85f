"""The architecture-adapter interface and its registry.

An adapter answers two questions about a loaded model: where its decoder blocks are, and which of
their weights are prunable matrices. :func:`adapter_for` asks every registered adapter (highest
``priority`` first) whether it ``matches`` the model; a family with particulars registers its own
adapter in one new file under ``sieve/models/adapters/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.registry import Registry


class Adapter(ABC):
    name: ClassVar[str]
    #: adapters with a higher priority are asked first (the generic fallback has the lowest)
    priority: ClassVar[int] = 0

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """``(module name, ModuleList)`` of the decoder blocks."""

    @abstractmethod
    def matrices(self, model: nn.Module) -> list[Matrix]:
        """All prunable matrices, in ``named_modules()`` order."""


ADAPTERS: Registry[Adapter] = Registry("architecture adapter", "sieve.models.adapters")


def adapter_for(model: nn.Module) -> Adapter:
    for name in sorted(ADAPTERS.names(), key=lambda n: -ADAPTERS.get(n).priority):
        cls = ADAPTERS.get(name)
        if cls.matches(model):
            return cls()
    raise SieveError(f"no architecture adapter understands {type(model).__name__}")


#: below this share of the blocks' weights an uncovered tensor is a bias-like detail, above it a gap
COVERAGE_TOLERANCE = 0.005
ROUTING_NAMES = ("gate", "router", "shared_expert_gate")


def check_coverage(adapter: Adapter, model: nn.Module, matrices: list[Matrix]) -> None:
    """Refuse a partial prune: every weight tensor (2-D or more) inside the decoder blocks must be
    a prunable matrix, routing (a MoE router or shared-expert gate), or negligible."""
    prefix, blocks = adapter.blocks(model)
    covered = {id(m.stored if m.expert is None else getattr(m.module, m.param)) for m in matrices}
    covered |= {id(m.module.weight) for m in matrices if m.expert is None and hasattr(m.module, "weight")}
    total, gaps = 0, []
    for name, param in blocks.named_parameters():
        total += param.numel()
        if param.dim() < 2 or id(param) in covered:
            continue
        if any(part in ROUTING_NAMES for part in name.split(".")[:-1]):
            continue
        gaps.append((param.numel(), name, tuple(param.shape)))
    missed = sum(n for n, _, _ in gaps)
    if gaps and missed > COVERAGE_TOLERANCE * total:
        numel, name, shape = max(gaps)
        raise SieveError(
            f"architecture adapter {adapter.name!r} does not understand {prefix}.{name} (shape {list(shape)}, "
            f"{numel:,} weights; {missed / total:.1%} of the blocks' weights in {len(gaps)} tensors): pruning would "
            f"silently skip them. {type(model).__name__} needs an adapter in sieve/models/adapters/"
        )


def find_matrices(model: nn.Module) -> list[Matrix]:
    """All prunable matrices of ``model``, in ``named_modules()`` order; a layout the adapter does
    not fully understand is an error naming what it would skip."""
    adapter = adapter_for(model)
    matrices = adapter.matrices(model)
    check_coverage(adapter, model, matrices)
    return matrices
