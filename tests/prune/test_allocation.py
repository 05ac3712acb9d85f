"""Allocation constructors: the uniform-rank baseline lands on its budget, not past it."""

from __future__ import annotations

import pytest
from torch import nn

from sieve.models.matrix import Matrix
from sieve.primitives.lowrank import break_even_rank, removed_params
from sieve.prune.allocation import Allocation

#: SmolLM2-135M's block: q, k, v, o, gate, up, down as (out, in)
SHAPES = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576),
          "gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}


def _matrices(blocks: int) -> list[Matrix]:
    return [Matrix(f"layers.{b}.{k}", b, k, nn.Linear(cols, rows, bias=False, device="meta"))
            for b in range(blocks) for k, (rows, cols) in SHAPES.items()]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.316, 0.5])
def test_uniform_rank_lands_on_the_budget_within_one_rank_step(fraction):
    matrices = _matrices(4)
    multiple = lambda rows, cols: 64  # noqa: E731 - SmolLM2's aligned multiple
    alloc = Allocation.uniform_rank(matrices, fraction, multiple)
    total = sum(m.numel for m in matrices)
    removed = sum(removed_params(*m.shape, alloc.ranks[m.name]) for m in matrices)
    assert removed >= fraction * total
    largest_step = max((r + c) * 64 for r, c in SHAPES.values())
    assert removed - fraction * total < largest_step  # one raise more would fall below the budget
    assert all(r % 64 == 0 and r < break_even_rank(*m.shape) for m, r in zip(matrices, alloc.ranks.values()))
    assert alloc.reduction(matrices) == pytest.approx(removed / total)
    per_matrix = Allocation.uniform_rank(matrices, fraction, multiple)
    assert per_matrix.ranks == alloc.ranks  # deterministic


def test_uniform_rank_without_multiples_is_each_matrix_at_its_fraction():
    matrices = _matrices(1)
    alloc = Allocation.uniform_rank(matrices, 0.5)
    for m in matrices:
        assert removed_params(*m.shape, alloc.ranks[m.name]) / m.numel == pytest.approx(0.5, abs=(sum(m.shape)) / m.numel)
    assert Allocation.uniform_rank(matrices, 0.0).ranks == {}
