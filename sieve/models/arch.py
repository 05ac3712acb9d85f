"""Where the prunable matrices are: the one place that knows model architectures.

A *matrix* is the 2-D weight of a ``Linear`` (or GPT-2 ``Conv1D``) inside a decoder block. Blocks are
discovered from the module tree, not from per-architecture name lists: the decoder stack is the
``nn.ModuleList`` holding the most parameters whose children all share one class. Every Linear /
Conv1D inside it is prunable; embeddings and ``lm_head`` sit outside it and are never touched.

Architectures whose layout the generic rule gets wrong register an adapter with
:func:`register_adapter` (one new file, one registration); :func:`find_matrices` asks the registered
adapters first and falls back to :class:`GenericAdapter`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sieve.errors import SieveError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


@dataclass(frozen=True, eq=False)
class Matrix:
    """One prunable weight, viewed as ``(out_features, in_features)``.

    ``kind`` is the module path inside its block (``self_attn.q_proj``, ``mlp.c_fc``): matrices of
    one kind play the same role in every block, which is what per-type search spaces group by.
    """

    name: str
    block: int
    kind: str
    module: nn.Module = field(repr=False)

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """A view of the weight as ``(out, in)``; in-place writes reach the module."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight.shape
        return int(rows), int(cols)

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


def _blocks_generic(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise SieveError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best[1], best[2]


class GenericAdapter:
    """Decoder stack = the largest homogeneous ModuleList; matrices = its Linear/Conv1D leaves."""

    name = "generic"

    @staticmethod
    def matches(model: nn.Module) -> bool:
        return True

    def blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return _blocks_generic(model)

    def matrices(self, model: nn.Module) -> list[Matrix]:
        prefix, blocks = self.blocks(model)
        found = []
        for index, block in enumerate(blocks):
            for sub, module in block.named_modules():
                if isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
                    name = f"{prefix}.{index}.{sub}" if prefix else f"{index}.{sub}"
                    found.append(Matrix(name=name, block=index, kind=sub, module=module))
        if not found:
            raise SieveError(f"no Linear or Conv1D layers inside the decoder blocks of {type(model).__name__}")
        return found


_ADAPTERS: list[Callable[[], GenericAdapter]] = []


def register_adapter(adapter: type[GenericAdapter]) -> type[GenericAdapter]:
    """Register an adapter class; adapters registered later are asked first."""
    _ADAPTERS.insert(0, adapter)
    return adapter


def adapter_for(model: nn.Module) -> GenericAdapter:
    for factory in _ADAPTERS:
        adapter = factory()
        if adapter.matches(model):
            return adapter
    return GenericAdapter()


def find_matrices(model: nn.Module) -> list[Matrix]:
    """All prunable matrices of ``model``, in ``named_modules()`` order."""
    return adapter_for(model).matrices(model)


def select_matrices(matrices: Sequence[Matrix], patterns: Sequence[str]) -> list[Matrix]:
    """Matrices whose full name matches any glob (``*``) or ``re:`` regex in ``patterns``.

    A pattern that matches nothing is an error naming the pattern: a typo must not silently
    shrink the search.
    """
    chosen: dict[str, Matrix] = {}
    for pattern in patterns:
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            hits = [m for m in matrices if regex.search(m.name)]
        else:
            hits = [m for m in matrices if fnmatch.fnmatchcase(m.name, pattern)]
        if not hits:
            raise SieveError(f"module pattern {pattern!r} matches no prunable matrix")
        for m in hits:
            chosen[m.name] = m
    return [m for m in matrices if m.name in chosen]
