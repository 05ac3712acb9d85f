"""Budget-keeping genetic operators: pure functions on level vectors, wrapped as pymoo operators.

* :func:`switch_levels` (mutation, EvoPress-style): ``n = min(U{1..3}, U{1..3})`` times, one gene
  goes up one level and another goes down one; with equal level steps this is budget-neutral.
* :func:`uniform_crossover`: each gene from either parent with probability ½ (two complementary
  children); children generally miss the budget and are repaired.
* :func:`repair_budget`: moves random genes one level at a time until the total cost lies in the
  budget window ``(low, high]``. Every increment is at most ``high − low``, so from above the window
  a decrement cannot jump below it and from below an increment cannot jump above it: the loop
  always ends inside, and a feasible genome is returned unchanged (idempotence).

The pymoo classes only adapt array shapes and pass pymoo's ``random_state`` through, so a search is
reproducible from its seed and resumable from the generator state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from sieve.search.space import SearchSpace


def total_cost(genome: np.ndarray, costs: Sequence[np.ndarray]) -> int:
    return int(sum(c[int(l)] for c, l in zip(costs, genome)))


def repair_budget(
    genome: np.ndarray,
    costs: Sequence[np.ndarray],
    lower: np.ndarray,
    upper: np.ndarray,
    window: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Nearest-by-random-walk genome whose cost lies in ``(window[0], window[1]]``."""
    low, high = window
    x = np.clip(np.asarray(genome, dtype=np.int64), lower, upper)
    total = total_cost(x, costs)
    while total > high:
        movable = np.flatnonzero(x > lower)
        i = int(rng.choice(movable))
        total += int(costs[i][x[i] - 1] - costs[i][x[i]])
        x[i] -= 1
    while total <= low:
        movable = np.flatnonzero(x < upper)
        i = int(rng.choice(movable))
        total += int(costs[i][x[i] + 1] - costs[i][x[i]])
        x[i] += 1
    return x


def switch_levels(
    genome: np.ndarray, lower: np.ndarray, upper: np.ndarray, rng: np.random.Generator, n_switches: int | None = None
) -> np.ndarray:
    """Move ``n`` single levels from one gene to another (budget-neutral for equal steps)."""
    x = np.asarray(genome, dtype=np.int64).copy()
    if n_switches is None:
        n_switches = int(min(rng.integers(1, 4), rng.integers(1, 4)))
    for _ in range(n_switches):
        up = np.flatnonzero(x < upper)
        down = np.flatnonzero(x > lower)
        if len(up) == 0 or len(down) == 0:
            break
        i = int(rng.choice(up))
        down = down[down != i]
        if len(down) == 0:
            break
        j = int(rng.choice(down))
        x[i] += 1
        x[j] -= 1
    return x


def uniform_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    take = rng.random(len(a)) < 0.5
    return np.where(take, a, b), np.where(take, b, a)


class LevelProblem(Problem):
    """The pymoo view of a search space: integer levels, one objective, evaluated outside pymoo."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(n_var=space.n_genes, n_obj=1, xl=space.lower, xu=space.upper, vtype=int)


class BudgetRepair(Repair):
    def __init__(self, space: SearchSpace, window: tuple[int, int]) -> None:
        super().__init__()
        self.costs = [g.costs for g in space.genes]
        self.lower, self.upper, self.window = space.lower, space.upper, window

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return np.array([repair_budget(x, self.costs, self.lower, self.upper, self.window, rng) for x in X])


class LevelSwitchMutation(Mutation):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__(prob=1.0)
        self.lower, self.upper = space.lower, space.upper

    def _do(self, problem, X, random_state=None, **kwargs):
        return np.array([switch_levels(x, self.lower, self.upper, random_state) for x in X])


class LevelCrossover(Crossover):
    def __init__(self) -> None:
        super().__init__(n_parents=2, n_offsprings=2)

    def _do(self, problem, X, random_state=None, **kwargs):
        _, n_matings, n_var = X.shape
        out = np.empty((2, n_matings, n_var), dtype=np.int64)
        for k in range(n_matings):
            out[0, k], out[1, k] = uniform_crossover(X[0, k], X[1, k], random_state)
        return out


class SeededSampling(Sampling):
    """Initial population: every seed (the space's baselines) first, then perturbations of them up
    to the population size. More seeds than the population are all kept: the initial population is
    then larger, and the first survival keeps the best ``population`` of it (a baseline listed last,
    like the greedy depth choice, is never dropped unscored)."""

    def __init__(self, space: SearchSpace, seeds: Sequence[np.ndarray], max_switches: int = 8) -> None:
        super().__init__()
        self.seeds = [np.asarray(s, dtype=np.int64) for s in seeds]
        self.lower, self.upper, self.max_switches = space.lower, space.upper, max_switches

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        rows = [s.copy() for s in self.seeds]
        while len(rows) < n_samples:
            base = self.seeds[len(rows) % len(self.seeds)]
            n = int(random_state.integers(1, self.max_switches + 1))
            rows.append(switch_levels(base, self.lower, self.upper, random_state, n))
        return np.array(rows, dtype=np.int64)
