"""The primitive registry is what the rest dispatches through: it lists ``mask``, ``lowrank`` and ``depth``,
each level costs itself and records itself into an allocation, and the CLI's name lists (read from
source, before torch is imported) equal the registries."""

import pytest

from sieve.models.adapters import find_matrices
from sieve.primitives.base import DENSE, PRIMITIVES, LevelGrid
from sieve.primitives.depth import Depth, RemovedBlock
from sieve.primitives.lowrank import LowRank, RankLevel, removed_params
from sieve.primitives.mask import Mask, MaskLevel, Pattern
from sieve.prune.allocation import Allocation
from sieve.resources import registered_names
from sieve.scores.base import SCORES
from sieve.search.fitness.base import FITNESS
from sieve.search.space import SpaceSpec


def test_registry_lists_mask_and_lowrank_and_builds_them():
    assert PRIMITIVES.names() == ["depth", "lowrank", "mask"]
    assert PRIMITIVES.build({"name": "mask", "pattern": "2:4"}) == Mask(pattern="2:4")
    assert PRIMITIVES.build("lowrank") == LowRank()
    assert [p.not_thresholded for p in (Mask(), Mask(pattern="2:4"), LowRank(), Depth())] == [
        None, "the space prunes in N:M patterns", "the space has factorised (low-rank) levels",
        "the space removes decoder blocks"]
    assert [p.exact for p in (Mask(), Mask(pattern="2:4"), LowRank(), Depth())] == [True, False, False, True]
    assert [p.changes_depth is not None for p in (Mask(), LowRank(), Depth())] == [False, False, True]


def test_cli_name_lists_equal_the_registries():
    from sieve.export.base import EXPORTERS

    for package, registry in [("sieve.primitives", PRIMITIVES), ("sieve.scores", SCORES),
                              ("sieve.search.fitness", FITNESS), ("sieve.export", EXPORTERS)]:
        assert registered_names(package) == registry.names()
    from sieve.data.task_spec import BUILTIN_TASKS
    from sieve.resources import builtin_names

    assert builtin_names("tasks") == sorted(BUILTIN_TASKS)  # --task's help lists the task YAMLs


def test_the_cli_imports_no_torch():
    """``sieve --help`` stays fast: the CLI's module (and every name list in its help) loads without torch."""
    import subprocess
    import sys

    code = "import sys, sieve.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_levels_cost_and_record_themselves_through_the_allocation(llama):
    m = find_matrices(llama)[0]
    rows, cols = m.shape
    cases = {
        DENSE: (0, Allocation({m.name: 0.0})),
        MaskLevel(3, sparsity=3 / cols): (rows * 3, Allocation({m.name: 3 / cols})),
        MaskLevel(2, Pattern(2, 4), 0.5): (rows * cols // 2, Allocation({m.name: 0.5}, patterns={m.name: Pattern(2, 4)})),
        RankLevel(5): (removed_params(rows, cols, 5), Allocation({m.name: 0.0}, ranks={m.name: 5})),
        RemovedBlock(m.block): (rows * cols, Allocation({}, removed_blocks=frozenset({m.block}))),
    }
    for level, (cost, allocation) in cases.items():
        assert level.removed(rows, cols) == cost
        assert Allocation.from_levels({m.name: level}) == allocation
        assert allocation.level_of(m) == level and allocation.removed(m) == cost
    assert MaskLevel(3, sparsity=0.1) == MaskLevel(3, sparsity=0.2)  # the count is the level, not the nominal fraction
    assert len({MaskLevel(3), RankLevel(3), DENSE, RemovedBlock(0)}) == 4


@pytest.mark.parametrize("primitives", [[{"name": "mask"}], [{"name": "lowrank"}],
                                        [{"name": "mask"}, {"name": "lowrank"}]])
def test_a_space_takes_its_levels_and_step_from_its_primitives(primitives, llama):
    """Every option of every gene is one level per matrix from a listed primitive, costing exactly
    the gene's cost; the step is the lowest-``order`` primitive's (masks: whole weights per row)."""
    from sieve.search.space import SearchSpace

    spec = SpaceSpec.model_validate({"name": "t", "primitives": primitives})
    space = SearchSpace(spec, find_matrices(llama))
    setter = min(spec.primitives, key=lambda p: p.order)
    assert space.step == setter.level_step(space.matrices, min(m.numel for m in space.matrices), LevelGrid())
    kinds = set()
    for gene in space.genes:
        for option, cost in zip(gene.options, gene.costs, strict=True):
            assert sum(level.removed(*m.shape) for level, m in zip(option, gene.matrices, strict=True)) == cost
            kinds |= {type(level) for level in option}
    expected = {DENSE.__class__} | {{"mask": MaskLevel, "lowrank": RankLevel}[p["name"]] for p in primitives}
    assert kinds == expected
    assert spec.not_thresholded == next((p.not_thresholded for p in spec.primitives if p.not_thresholded), None)
