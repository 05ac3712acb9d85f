"""A prunable matrix: the 2-D weight of a ``Linear`` (or GPT-2 ``Conv1D``) inside a decoder block,
or one expert's slice of a 3-D expert tensor (Mixture-of-Experts).

Adapters (:mod:`sieve.models.adapters`) find them; everything downstream sees only
:class:`Matrix`, always as ``(out_features, in_features)``, named by its full module name (an
expert's: ``<experts module>.<expert>.<tensor>``, e.g. ``model.layers.0.mlp.experts.3.down_proj``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
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
    param: str = "weight"  # the module's tensor holding the matrix
    expert: int | None = None  # the index into a 3-D expert tensor, or None for a plain 2-D weight

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """A view of the weight as ``(out, in)``; in-place writes reach the module."""
        if self.expert is not None:
            return getattr(self.module, self.param).data[self.expert]
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def stored(self) -> torch.Tensor:
        """The matrix as the module stores it: its dense original when a pruner computes the
        weight at every forward (a parametrisation), so reading a shape never triggers that
        computation; an expert's slice of its 3-D tensor."""
        if self.expert is not None:
            return getattr(self.module, self.param).data[self.expert]
        parametrizations = getattr(self.module, "parametrizations", None)
        if parametrizations is not None and "weight" in parametrizations:
            return parametrizations.weight.original
        return self.module.weight

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.stored.shape
        return (int(cols), int(rows)) if self.transposed else (int(rows), int(cols))

    @property
    def numel(self) -> int:
        return self.stored.numel()


def select_matrices(matrices: Sequence[Matrix], patterns: Sequence[str]) -> list[Matrix]:
    """Matrices whose full name matches any glob (``*``) or ``re:`` regex in ``patterns``.

    A pattern that matches nothing is an error naming the pattern: a typo must not silently
    shrink the search.
    """
    chosen: dict[str, Matrix] = {}
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                regex = re.compile(pattern[3:])
            except re.error as exc:
                raise SieveError(f"module pattern {pattern!r} is not a valid regex: {exc}") from None
            hits = [m for m in matrices if regex.search(m.name)]
        else:
            hits = [m for m in matrices if fnmatch.fnmatchcase(m.name, pattern)]
        if not hits:
            raise SieveError(f"module pattern {pattern!r} matches no prunable matrix")
        for m in hits:
            chosen[m.name] = m
    return [m for m in matrices if m.name in chosen]


def weights_hash(matrices: Sequence[Matrix]) -> str:
    """sha256 over the matrices' names, shapes, dtypes and dense bytes (order-sensitive)."""
    digest = hashlib.sha256()
    for m in matrices:
        w = m.stored.detach()
        digest.update(f"{m.name}:{tuple(w.shape)}:{w.dtype}".encode())
        digest.update(w.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
