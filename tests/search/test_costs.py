"""Genome costs with removal genes (the per-matrix ``deploy`` space): exact, and kept by the operators."""

from pathlib import Path

import numpy as np
import pytest

from sieve.models.adapters import find_matrices
from sieve.primitives.lowrank import RankLevel
from sieve.search.operators import repair_budget, switch_levels, uniform_crossover
from sieve.search.seeds import removal_map
from sieve.search.space import SearchSpace, SpaceSpec
from tests.conftest import tiny_llama


@pytest.fixture
def deploy():
    return SearchSpace(SpaceSpec.load("deploy"), find_matrices(tiny_llama(layers=4)))


def _blocks(space):
    found = {}
    for m in space.matrices:
        found.setdefault(m.block, []).append(m)
    return found


def test_deploy_has_a_gene_per_matrix_and_a_removal_gene_per_block(deploy):
    blocks = _blocks(deploy)
    fine = [g for g in deploy.genes if g.removes is None]
    removal = [g for g in deploy.genes if g.removes is not None]
    assert [g.matrices[0].name for g in fine] == [m.name for m in deploy.matrices] and all(len(g.matrices) == 1 for g in fine)
    assert sorted(g.removes for g in removal) == sorted(blocks)
    for g in removal:
        assert [m.name for m in g.matrices] == [m.name for m in blocks[g.removes]]
        assert list(g.costs) == [0, sum(m.numel for m in blocks[g.removes])] and (g.lo, g.hi) == (0, 1)
    assert all(not o[0].removes_block for g in fine for o in g.options)  # fine genes only factorise
    assert deploy.max_increment == max(int(np.diff(g.costs[g.lo:]).max(initial=0)) for g in fine)


def test_removal_gene_overrides_its_block_and_the_cost_is_exact(deploy):
    """A removed block costs its parameters whatever its matrices' genes say; every move's
    :meth:`delta` is the change of the exact total, and the allocation removes what the cost says."""
    rng = np.random.default_rng(0)
    costs = deploy.costs
    for _ in range(300):
        x = rng.integers(deploy.lower, deploy.upper + 1)
        alloc = deploy.allocation(x)
        assert sum(alloc.removed(m) for m in deploy.matrices) == deploy.cost(x)
        removed = {g.removes for g, l in zip(deploy.genes, x) if g.removes is not None and l == 1}
        assert removed <= set(alloc.removed_blocks)
        for i in range(deploy.n_genes):
            for move in (-1, 1):
                if deploy.lower[i] <= x[i] + move <= deploy.upper[i]:
                    y = x.copy()
                    y[i] += move
                    assert costs.delta(x, i, move) == deploy.cost(y) - deploy.cost(x)


def test_a_kept_block_of_rank_zero_factors_is_removed(tmp_path: Path):
    """Every matrix at rank 0 is the function of the removed block at the same cost; the allocation
    records the removal (an export then drops the block instead of running an identity block). Rank
    multiples of 32 on 32-wide matrices make the top levels rank 0."""
    text = SpaceSpec.load("deploy").model_dump()
    text["primitives"][0]["rank_multiple"] = 32
    deploy = SearchSpace(SpaceSpec.model_validate(text), find_matrices(tiny_llama(layers=4)))
    block, members = next(iter(_blocks(deploy).items()))
    x = deploy.lower.copy()
    for i, g in enumerate(deploy.genes):
        if g.removes is None and g.matrices[0].block == block:
            zero = [l for l, o in enumerate(g.options) if isinstance(o[0], RankLevel) and o[0].rank == 0]
            x[i] = zero[0]
    alloc = deploy.allocation(x)
    assert alloc.removed_blocks == {block} and not alloc.ranks
    assert sum(alloc.removed(m) for m in deploy.matrices) == deploy.cost(x) == sum(m.numel for m in members)


def test_repair_moves_blocks_only_when_no_matrix_gene_can(deploy):
    """From a seed that removes one block and factorises too much, the repair walks matrix genes
    down into the window and keeps the block removed; with every matrix dense it must put a block back."""
    low, high = deploy.budget_window(0.4)
    first = next(i for i, g in enumerate(deploy.genes) if g.removes is not None)
    x = deploy.upper.copy()
    x[[i for i, g in enumerate(deploy.genes) if g.removes is not None]] = 0
    x[first] = 1
    for seed in range(20):
        y = repair_budget(x, deploy.costs, (low, high), np.random.default_rng(seed))
        assert low < deploy.cost(y) <= high and y[first] == 1
    blocks = deploy.lower.copy()
    removal = [i for i, g in enumerate(deploy.genes) if g.removes is not None]
    blocks[removal] = 1  # every block removed, far above the budget
    y = repair_budget(blocks, deploy.costs, (low, high), np.random.default_rng(0))
    assert low < deploy.cost(y) <= high and 0 < y[removal].sum() < len(removal)


def test_operators_keep_the_deploy_budget_and_move_blocks(deploy):
    low, high = deploy.budget_window(0.45)
    rng = np.random.default_rng(3)
    x = repair_budget(deploy.lower.copy(), deploy.costs, (low, high), rng)
    removal = np.array([g.removes is not None for g in deploy.genes])
    seen = set()
    for _ in range(400):
        if rng.random() < 0.5:
            y = switch_levels(x, deploy.costs, rng)
        else:
            other = repair_budget(rng.integers(deploy.lower, deploy.upper + 1), deploy.costs, (low, high), rng)
            y, _ = uniform_crossover(x, other, rng)
        y = repair_budget(y, deploy.costs, (low, high), rng)
        assert low < deploy.cost(y) <= high
        assert np.array_equal(repair_budget(y, deploy.costs, (low, high), rng), y)
        seen.add(int(y[removal].sum()))
        x = y
    assert len(seen) > 1  # blocks are removed and put back by the search, not frozen by the repair


def test_nearest_genome_reproduces_a_blocks_and_ranks_seed(deploy):
    """A seed of removed blocks plus per-matrix ranks is the genome that gives it back exactly."""
    x = deploy.lower.copy()
    rng = np.random.default_rng(1)
    for i, g in enumerate(deploy.genes):
        x[i] = 1 if g.removes is not None and g.removes == 0 else (rng.integers(g.lo, g.hi + 1) if g.removes is None else 0)
    for i, g in enumerate(deploy.genes):
        if g.removes is None and g.matrices[0].block == 0:
            x[i] = g.lo
    alloc = deploy.allocation(x)
    again = deploy.nearest_genome(removal_map(alloc, deploy))
    assert deploy.allocation(again) == alloc


def test_spectral_fill_lands_in_the_window_and_loses_less_than_random_levels(deploy):
    """A blocks-only start below the window: the spectral fill reaches the window through the levels
    that lose least energy per parameter, and loses less in total than the repair's random levels."""
    from sieve.search.seeds import spectral_fill

    rng = np.random.default_rng(0)
    lost = [np.concatenate([[0.0], np.cumsum(rng.uniform(0.0, 1.0, len(g.costs) - 1))]) if g.removes is None
            else np.zeros(2) for g in deploy.genes]  # any increasing loss per level
    low, high = deploy.budget_window(0.4)
    start = deploy.lower.copy()
    start[next(i for i, g in enumerate(deploy.genes) if g.removes is not None)] = 1  # one block of four: 0.25
    filled = spectral_fill(start, deploy, lost, (low, high))
    assert low < deploy.cost(filled) <= high and filled[deploy.costs.removal].sum() == 1

    def total_lost(x):
        return sum(lost[i][x[i]] for i in range(deploy.n_genes) if not deploy.costs.overridden(x)[i])

    randoms = [repair_budget(start, deploy.costs, (low, high), np.random.default_rng(k)) for k in range(10)]
    assert all(total_lost(filled) <= total_lost(r) for r in randoms)
    assert np.array_equal(spectral_fill(filled, deploy, lost, (low, high)), filled)  # in the window: unchanged


def test_factors_lose_the_energy_of_the_dropped_singular_values():
    import torch

    from sieve.primitives.lowrank import factorize

    torch.manual_seed(0)
    w, x = torch.randn(12, 10, dtype=torch.float64), torch.randn(64, 10, dtype=torch.float64)
    cov = x.T @ x
    factors = factorize(w, cov, keep=4)
    lower = torch.linalg.cholesky(cov + 0.01 * torch.diagonal(cov).mean() * torch.eye(10, dtype=torch.float64))
    for rank in (0, 2, 4):
        error = torch.linalg.matrix_norm((w - factors.weight(rank)) @ lower) ** 2
        assert factors.lost(rank) == pytest.approx(float(error / torch.linalg.matrix_norm(w @ lower) ** 2), rel=1e-9)
