"""Budget-keeping genetic operators: pure functions on level vectors, wrapped as pymoo operators.

* :func:`switch_levels` (mutation, EvoPress-style): ``n = min(U{1..3}, U{1..3})`` times, one gene
  goes up one level and another goes down one; with equal level steps this is budget-neutral.
* :func:`uniform_crossover`: each gene from either parent with probability ½ (two complementary
  children); children generally miss the budget and are repaired.
* :func:`repair_budget`: moves random genes one level at a time until the total cost
  (:class:`~sieve.search.costs.GenomeCosts`) lies in the budget window ``(low, high]``. Every
  level increment of a non-removal gene is at most ``high − low``, so from above the window a
  decrement cannot jump below it and from below an increment cannot jump above it: the loop ends
  inside, and a feasible genome is returned unchanged (idempotence). Whole-block removal genes
  move in the repair only where no level gene can.

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

from sieve.search.costs import GenomeCosts
from sieve.search.space import SearchSpace


def repair_budget(genome: np.ndarray, costs: GenomeCosts, window: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Nearest-by-random-walk genome whose cost lies in ``(window[0], window[1]]``.

    Down while above the window, up while at or below it, one random gene one level at a time.
    Removal genes (whole decoder blocks, far larger than a level step) move only when no other gene
    can: the walk fills the window with fine levels and leaves which blocks go to the mutation and
    crossover. An upward move that would jump past the window is not taken; if only such moves are
    left, the cheapest block removal is taken and the walk goes down again."""
    low, high = window
    x = np.clip(np.asarray(genome, dtype=np.int64), costs.lower, costs.upper)
    total = costs.total(x)
    fine = ~costs.removal
    for _ in range(len(x) + 1):
        while total > high:
            i = _pick(costs.movable(x, -1), fine, rng)
            total += costs.delta(x, i, -1)
            x[i] -= 1
        while total <= low:
            up = costs.movable(x, +1)
            levels = up[fine[up]]  # a level increment is at most high − low: it cannot pass the window
            fits = levels if len(levels) else [i for i in up if costs.delta(x, i, +1) <= high - total]
            if not len(fits):
                break
            i = int(rng.choice(fits))
            total += costs.delta(x, i, +1)
            x[i] += 1
        if low < total <= high:
            return x
        blocks = [i for i in costs.movable(x, +1) if costs.removal[i]]
        if not blocks:
            break
        i = min(blocks, key=lambda b: costs.delta(x, b, +1))
        total += costs.delta(x, i, +1)
        x[i] += 1
    raise AssertionError("the budget repair did not reach the window")  # budget_window checked it reachable


def _pick(candidates: np.ndarray, fine: np.ndarray, rng: np.random.Generator) -> int:
    """A random candidate, a fine (non-removal) gene where there is one."""
    preferred = candidates[fine[candidates]]
    return int(rng.choice(preferred if len(preferred) else candidates))


def switch_levels(genome: np.ndarray, costs: GenomeCosts, rng: np.random.Generator,
                  n_switches: int | None = None) -> np.ndarray:
    """Move ``n`` single levels from one gene to another (budget-neutral for equal steps; genes
    whose block is removed count for nothing and are not moved)."""
    x = np.asarray(genome, dtype=np.int64).copy()
    if n_switches is None:
        n_switches = int(min(rng.integers(1, 4), rng.integers(1, 4)))
    for _ in range(n_switches):
        up = costs.movable(x, +1)
        down = costs.movable(x, -1)
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
        self.costs, self.window = space.costs, window

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return np.array([repair_budget(x, self.costs, self.window, rng) for x in X])


class LevelSwitchMutation(Mutation):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__(prob=1.0)
        self.costs = space.costs

    def _do(self, problem, X, random_state=None, **kwargs):
        return np.array([switch_levels(x, self.costs, random_state) for x in X])


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
        self.costs, self.max_switches = space.costs, max_switches

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        rows = [s.copy() for s in self.seeds]
        while len(rows) < n_samples:
            base = self.seeds[len(rows) % len(self.seeds)]
            n = int(random_state.integers(1, self.max_switches + 1))
            rows.append(switch_levels(base, self.costs, random_state, n))
        return np.array(rows, dtype=np.int64)
