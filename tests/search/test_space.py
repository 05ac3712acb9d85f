from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.primitives.lowrank import break_even_rank
from sieve.primitives.mask import row_prune_count
from sieve.resources import builtin_names
from sieve.search.operators import repair_budget, switch_levels, uniform_crossover
from sieve.search.space import SearchSpace, SpaceSpec

SHIPPED = builtin_names("search_spaces")


def test_shipped_spaces_exist():
    assert set(SHIPPED) >= {"per_matrix", "per_block", "per_type", "nm"}


@pytest.mark.parametrize("path", SHIPPED)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_shipped_space_validates_and_keeps_the_budget(path, arch, request):
    model = request.getfixturevalue(arch)
    space = SearchSpace(SpaceSpec.load(path), find_matrices(model))
    budget = 0.3 if space.pattern.structured else 0.5
    low, high = space.budget_window(budget)
    rng = np.random.default_rng(0)
    x = repair_budget(space.nearest_genome({m.name: budget for m in space.matrices}), space.costs, (low, high), rng)
    for _ in range(1500):
        if rng.random() < 0.5:
            y = switch_levels(x, space.costs, rng)
        else:
            other = repair_budget(rng.integers(space.lower, space.upper + 1), space.costs, (low, high), rng)
            y, _ = uniform_crossover(x, other, rng)
        y = repair_budget(y, space.costs, (low, high), rng)
        cost = space.cost(y)
        assert low < cost <= high
        assert np.all(y >= space.lower) and np.all(y <= space.upper)
        assert np.array_equal(repair_budget(y, space.costs, (low, high), rng), y)
        x = y
    alloc = space.allocation(x)
    assert sum(alloc.removed(m) for m in space.matrices) == space.cost(x)  # costs are exact
    if space.spec.depth and space.spec.lowrank is None:  # whole blocks: all of a removed block goes, nothing else
        per_block = {m.block: 0 for m in space.matrices}
        for m in space.matrices:
            per_block[m.block] += m.numel
        assert space.cost(x) == sum(per_block[b] for b in alloc.removed_blocks)
        assert 0 < len(alloc.removed_blocks) < len(per_block)
        assert high - space.step < space.cost(x) <= high <= budget * space.total
    elif space.spec.mask is not None and not space.pattern.structured and space.spec.lowrank is None:
        assert abs(space.cost(x) - budget * space.total) <= space.step
        assert space.max_increment == space.step
        removed = sum(m.shape[0] * row_prune_count(m.shape[1], alloc.sparsity[m.name]) for m in space.matrices)
        assert removed == space.cost(x)
    if space.spec.lowrank is not None:  # within one level step (a rank step is out + in parameters)
        assert abs(space.cost(x) - budget * space.total) <= space.max_increment
        shapes = {m.name: m.shape for m in space.matrices}
        assert all(r < break_even_rank(*shapes[n]) for n, r in alloc.ranks.items())  # factorised only when smaller
        if space.spec.mask is None:
            assert set(alloc.ranks) | {n for n, s in alloc.sparsity.items() if s} == set(alloc.ranks)


def test_per_matrix_switch_is_budget_neutral(llama):
    space = SearchSpace(SpaceSpec.load("per_matrix"), find_matrices(llama))
    assert all(space.step % m.shape[0] == 0 for m in space.matrices)
    rng = np.random.default_rng(1)
    x = (space.upper // 2).astype(np.int64)
    for _ in range(2000):
        y = switch_levels(x, space.costs, rng)
        assert space.cost(y) == space.cost(x)
        x = y


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_bad_space_files(tmp_path, llama):
    mats = find_matrices(llama)
    with pytest.raises(SieveError, match="'\\*attention\\*'"):
        SearchSpace(SpaceSpec.load(_write(tmp_path, "modules: ['*attention*']\n")), mats)
    with pytest.raises(SieveError, match="space.yaml.level: unknown key"):
        SpaceSpec.load(_write(tmp_path, "level: {max: 0.9}\n"))
    with pytest.raises(SieveError, match="space.yaml.genes: Input should be 'matrix', 'block', 'type' or 'expert'"):
        SpaceSpec.load(_write(tmp_path, "genes: head\n"))
    with pytest.raises(SieveError, match="space.yaml.levels.min: Input should be a valid number"):
        SpaceSpec.load(_write(tmp_path, "levels: {min: zero}\n"))
    with pytest.raises(SieveError, match="sparsegpt updates weights"):
        SpaceSpec.load(_write(tmp_path, "method: {name: sparsegpt}\n"))
    with pytest.raises(SieveError, match="not valid YAML"):
        SpaceSpec.load(_write(tmp_path, "modules: [\n"))
    with pytest.raises(SieveError, match="unknown search space 'per_head'"):
        SpaceSpec.load("per_head")


def test_unreachable_budget(llama):
    mats = find_matrices(llama)
    with pytest.raises(SieveError, match="unreachable"):
        SearchSpace(SpaceSpec.load("per_matrix"), mats).budget_window(0.97)
    with pytest.raises(SieveError, match="unreachable"):
        SearchSpace(SpaceSpec.load("nm"), mats).budget_window(0.6)
    with pytest.raises(SieveError, match="fraction in \\(0, 1\\)"):
        SearchSpace(SpaceSpec.load("per_matrix"), mats).budget_window(1.0)


@pytest.mark.parametrize("multiple", [8, 16])
def test_aligned_ranks_are_multiples_and_keep_the_budget(llama, tmp_path, multiple):
    """``rank_multiple`` rounds every level's ranks down to a multiple; costs stay exact and a
    repaired genome stays within one (coarser) level step of the budget."""
    path = _write(tmp_path, f"modules: ['*']\ngenes: matrix\nprimitives: [{{name: lowrank, rank_multiple: {multiple}}}]\n")
    space = SearchSpace(SpaceSpec.load(path), find_matrices(llama))
    ranks = {level.rank for g in space.genes for o in g.options for level in o if level.factorised}
    assert ranks and all(r % multiple == 0 for r in ranks if r not in {break_even_rank(*m.shape) for m in space.matrices})
    low, high = space.budget_window(0.3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = repair_budget(rng.integers(space.lower, space.upper + 1), space.costs, (low, high), rng)
        assert low < space.cost(x) <= high
        alloc = space.allocation(x)
        assert all(r % multiple == 0 for r in alloc.ranks.values())
        assert sum(alloc.removed(m) for m in space.matrices) == space.cost(x)


@pytest.mark.parametrize("name", ["per_matrix", "per_block", "lowrank", "nm"])
def test_budget_is_rounded_down_never_more_than_one_step(name, llama):
    """The window's top ``R'`` is at most the budget (the decimal as written) and, in exact spaces,
    less than one step below it (``⌊B·P / step⌋ · step``); elsewhere ``⌊B·P⌋``."""
    space = SearchSpace(SpaceSpec.load(name), find_matrices(llama))
    rng = np.random.default_rng(0)
    smallest = space.smallest_cost / space.total
    highest = sum(int(g.costs[g.hi]) for g in space.genes) / space.total
    for budget in rng.uniform(smallest, highest, 300):
        low, high = space.budget_window(float(budget))
        wanted = Fraction(str(float(budget))) * space.total  # the decimal a user writes
        assert high <= wanted and high > wanted - (space.step if space.spec.exact else 1)
        assert low == high - max(space.max_increment, 1)
    if space.spec.exact:
        assert space.budget_window(0.3)[1] == 3 * space.total // 10 // space.step * space.step


@pytest.mark.parametrize("name", ["per_matrix", "nm", "lowrank"])
def test_budget_below_one_step_is_one_error_line_naming_the_smallest(name, llama):
    space = SearchSpace(SpaceSpec.load(name), find_matrices(llama))
    smallest = space.smallest_budget
    for budget in (1e-9, space.smallest_cost / space.total * 0.999):
        with pytest.raises(SieveError) as info:
            space.budget_window(budget)
        assert str(info.value) == (f"--budget {budget:g} is below one level step of space {name}; the smallest "
                                   f"possible budget is {smallest}")
    low, high = space.budget_window(float(smallest))  # the value it names is accepted
    assert 0 < high and low < high


def test_deploy_removal_supersedes_a_block_of_rank_zero_factors(llama, tmp_path):
    """With coarse rank multiples the top low-rank levels round every rank of a block to 0: the same
    function as removing the block, but an identity block in the export. Removal is the only option
    at the block's full cost."""
    text = ("modules: ['*']\ngenes: block\nlevels: {min: 0.0, max: 0.95, per_smallest_gene: 20}\n"
            "primitives: [{name: lowrank, rank_multiple: 32}, {name: depth}]\n")
    space = SearchSpace(SpaceSpec.load(_write(tmp_path, text)), find_matrices(llama))
    plain = SearchSpace(SpaceSpec.load(_write(tmp_path, text.replace(", {name: depth}", ""))), find_matrices(llama))
    for gene, lowrank_only in zip(space.genes, plain.genes):
        numel = sum(m.numel for m in gene.matrices)
        full = [o for c, o in zip(gene.costs, gene.options) if c == numel]
        assert len(full) == 1 and all(level.removes_block for level in full[0])
        zero_ranks = [o for c, o in zip(lowrank_only.costs, lowrank_only.options) if c == numel]
        assert zero_ranks and all(level.factorised and level.rank == 0 for level in zero_ranks[0])
        assert len(gene.options) == len(lowrank_only.options)  # the rank-0 option became the removal


@pytest.mark.parametrize(("text", "sources"), [
    ("genes: block\nprimitives: [{name: depth}]\n", ()),
    ("genes: block\nprimitives: [{name: depth}]\nmethod: {name: fused}\n", ()),
    ("genes: matrix\nprimitives: [{name: mask}]\nmethod: {name: wanda}\n", ("general",)),
    ("genes: matrix\nprimitives: [{name: mask}]\nmethod: {name: wanda, source: task}\n", ("task",)),
    ("genes: matrix\nprimitives: [{name: lowrank, covariance: task}]\nmethod: {name: wanda}\n", ("general", "task")),
    ("genes: block\nprimitives: [{name: lowrank, covariance: general}, {name: depth}]\n", ("general",)),
])
def test_a_space_reads_the_sources_its_primitives_use(tmp_path, text, sources):
    """A scoring method's sources count only where something scores with it (masks; the OWL baseline
    of a space without depth genes): whole-block removal reads no statistics, so no run of it
    collects or stores any."""
    assert SpaceSpec.load(_write(tmp_path, "modules: ['*']\n" + text)).sources == sources
