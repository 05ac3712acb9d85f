"""Every registered pymoo operator is a pure function of its inputs and pymoo's random state."""

import numpy as np
import pytest
from pymoo.core.population import Population

from sieve.models.adapters import find_matrices
from sieve.search.operators import (
    BudgetRepair,
    LevelCrossover,
    LevelProblem,
    LevelSwitchMutation,
    SeededSampling,
    repair_budget,
    switch_levels,
)
from sieve.search.space import SearchSpace, SpaceSpec


@pytest.fixture
def setup(llama):
    space = SearchSpace(SpaceSpec.load("per_matrix"), find_matrices(llama))
    window = space.budget_window(0.5)
    seed = space.nearest_genome({m.name: 0.5 for m in space.matrices})
    return space, window, LevelProblem(space), seed


def _run(op, setup, seed):
    space, window, problem, start = setup
    rng = np.random.default_rng(seed)
    if isinstance(op, SeededSampling):
        return op(problem, 6, random_state=rng).get("X")
    members = [repair_budget(np.random.default_rng(k).integers(space.lower, space.upper + 1), space.costs, window,
                             np.random.default_rng(k)) for k in range(4)]
    pop = Population.new(X=np.array(members))
    if isinstance(op, LevelCrossover):
        return op(problem, pop, parents=np.array([[0, 1], [2, 3]]), random_state=rng).get("X")
    if isinstance(op, BudgetRepair):  # infeasible inputs: random levels far from the budget
        raw = [np.random.default_rng(10 + k).integers(space.lower, space.upper + 1) for k in range(4)]
        return op(problem, Population.new(X=np.array(raw)), random_state=rng).get("X")
    return op(problem, pop, random_state=rng).get("X")


@pytest.mark.parametrize("name", ["sampling", "crossover", "mutation", "repair"])
def test_operator_seed_determinism(name, setup):
    space, window, problem, start = setup
    other = switch_levels(start, space.costs, np.random.default_rng(9), 5)
    op = {"sampling": lambda: SeededSampling(space, [start, other]), "crossover": LevelCrossover,
          "mutation": lambda: LevelSwitchMutation(space), "repair": lambda: BudgetRepair(space, window)}[name]
    a, b, c = _run(op(), setup, 0), _run(op(), setup, 0), _run(op(), setup, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a >= space.lower) and np.all(a <= space.upper)
    if name in ("mutation", "repair"):  # switches are budget-neutral; repair lands in the window
        assert all(window[0] < space.cost(x) <= window[1] for x in a)


def test_sampling_keeps_every_seed_beyond_the_population(setup):
    """More seeds than the population: all of them start, in order (none is dropped unscored)."""
    space, window, problem, start = setup
    seeds = [switch_levels(start, space.costs, np.random.default_rng(k), 3) for k in range(5)]
    rows = SeededSampling(space, seeds)(problem, 3, random_state=np.random.default_rng(0)).get("X")
    assert len(rows) == 5 and all(np.array_equal(r, s) for r, s in zip(rows, seeds))
