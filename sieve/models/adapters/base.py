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


def find_matrices(model: nn.Module) -> list[Matrix]:
    """All prunable matrices of ``model``, in ``named_modules()`` order."""
    return adapter_for(model).matrices(model)
