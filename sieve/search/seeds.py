"""Where a search starts and what it is measured against: the labelled baseline allocations of a space.

Every baseline is an allocation the search's budget allows (repaired into its window) that joins
the initial population, so the best the search returns is never worse on validation than any of
them, and its final table scores each on the held-out test split:

* zeros and factors: the uniform allocation of the space's primitive, OWL's outlier-weighted
  sparsities, and (mixed spaces) uniform low-rank factors;
* spaces that remove whole blocks: ShortGPT's choice (the lowest block influence
  ``BI_l = 1 − mean cos(x_l, x_{l+1})``) on general text and on task text, and Gromov et al.'s
  contiguous run (the smallest angular distance between its input and output, general text),
  from one pass of each text through the dense model (:func:`~sieve.stats.blocks.block_similarity`),
  and the greedy choice on the search's own fitness (:func:`greedy_baseline`: ``k`` times, remove
  the block whose removal costs least on the full validation split — ``k·L`` evaluations, a floor
  the search starts from rather than has to find); a ``deploy`` space adds uniform low-rank
  factors. Each takes as many whole blocks as the budget holds; the repair fills any remainder with
  other levels — in a space with per-matrix genes beside removal genes (``deploy``) first
  :func:`spectral_fill`: the factor levels that lose least whitened output energy per parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from sieve.primitives.base import DENSE
from sieve.prune.allocation import Allocation
from sieve.prune.depth_choice import angular_blocks, greedy_blocks, shortgpt_blocks
from sieve.prune.owl import owl_allocation
from sieve.prune.pruner import ModelPruner
from sieve.search.config import SearchConfig
from sieve.search.operators import repair_budget
from sieve.search.space import SearchSpace
from sieve.stats.blocks import block_similarity
from sieve.stats.calibrate import Statistics, general_batches, text_batches
from sieve.workspace import Workspace

log = logging.getLogger(__name__)

#: the greedy baseline's label by the fitness it is scored with
GREEDY_LABELS = {"task_nll": "task", "task_acc": "task-acc", "kl": "task-kl", "general_kl": "general"}


def baselines(config: SearchConfig, ws: Workspace, space: SearchSpace, window: tuple[int, int],
              statistics: Statistics) -> dict[str, Allocation]:
    """The space's baselines by label, in seeding order (see the module docstring)."""
    spec = config.space
    uniform_rank = (Allocation.uniform_rank(space.matrices, config.budget, spec.lowrank.multiple_for)
                    if spec.lowrank is not None else None)
    if spec.depth:
        found = depth_baselines(config, ws, space, window)
        if uniform_rank is not None:
            found[f"uniform-lowrank-{spec.lowrank.covariance}"] = uniform_rank
        return found
    method = spec.method
    found = {}
    if spec.mask is None:
        found[f"uniform-lowrank-{spec.lowrank.covariance}"] = uniform_rank
    elif space.pattern.structured:
        found[f"uniform-{method.name}"] = Allocation({}, space.pattern)
    else:
        found[f"uniform-{method.name}"] = Allocation.uniform(space.matrices, config.budget)
    found[f"owl-{method.name}"] = owl_allocation(space.matrices, method, statistics.per_matrix, config.budget)
    if uniform_rank is not None and spec.mask is not None:
        found[f"uniform-lowrank-{spec.lowrank.covariance}"] = uniform_rank
    return found


def blocks_within(space: SearchSpace, high: int) -> int:
    """How many whole blocks a budget of ``high`` parameters removes (blocks of the mean size)."""
    sizes: dict[int, int] = {}
    for m in space.matrices:
        sizes[m.block] = sizes.get(m.block, 0) + m.numel
    return min(len(sizes) - 1, int(high // (sum(sizes.values()) / len(sizes))))


def depth_baselines(config: SearchConfig, ws: Workspace, space: SearchSpace, window: tuple[int, int]) -> dict[str, Allocation]:
    """ShortGPT on general and on task text, and the angular run on general text."""
    k = blocks_within(space, window[1])
    device = ws.device
    sources = {"general": general_batches(ws.corpus, ws.tokenizer, config.calibration)}
    if ws.task is not None:
        sources["task"] = text_batches(list(ws.task.calibration_texts())[: config.calibration.task_examples],
                                       ws.tokenizer, config.calibration)
    found: dict[str, Allocation] = {}
    for source, batches in sources.items():
        moved = [(ids.to(device), mask.to(device) if mask is not None else None) for ids, mask in batches]
        similarity = block_similarity(ws.model, moved)
        found[f"shortgpt-{source}"] = Allocation({}, removed_blocks=frozenset(shortgpt_blocks(similarity.influence, k)))
        if source == "general":
            found["angular-general"] = Allocation({}, removed_blocks=frozenset(angular_blocks(similarity.angular, k)))
    log.info("depth baselines (%d blocks): %s", k, "; ".join(f"{label} {sorted(a.removed_blocks)}"
                                                            for label, a in found.items()))
    return found


def removal_map(allocation: Allocation, space: SearchSpace) -> Mapping[str, float]:
    """Per matrix, where the search's :meth:`~sieve.search.space.SearchSpace.nearest_genome` starts
    from: the fraction of its parameters removed (factors, removed blocks), or its nominal sparsity
    (zeros)."""
    if allocation.ranks or allocation.removed_blocks:
        return allocation.removed_fractions(space.matrices)
    return allocation.sparsity


def seed_genomes(starts: Sequence[Mapping[str, float]], space: SearchSpace, window: tuple[int, int],
                 seed: int, lost: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Each start (a per-matrix removal map) as the nearest genome, filled up to the budget window
    by :func:`spectral_fill` where ``lost`` is given, and repaired into it (one generator, in order)."""
    rng = np.random.default_rng(seed)
    genomes = []
    for start in starts:
        genome = space.nearest_genome(start)
        if lost is not None:
            genome = spectral_fill(genome, space, lost, window)
        genomes.append(repair_budget(genome, space.costs, window, rng))
    return genomes


def lost_energy(space: SearchSpace, pruner: ModelPruner) -> list[np.ndarray] | None:
    """Per gene and level, the summed fraction of whitened output energy its matrices' factors lose,
    ``Σ_m ‖(W_m − A_r B_r)L_m‖² / ‖W_m L_m‖²`` (:meth:`~sieve.primitives.lowrank.Factors.lost`; 0 for
    removal genes and dense levels); ``None`` where some level is neither dense nor factors."""
    table = []
    for gene in space.genes:
        row = []
        for option in gene.options:
            if gene.removes is not None:
                row.append(0.0)
            elif all(level == DENSE or level.factorised for level in option):
                row.append(sum(pruner.factors_of(m.name).lost(level.rank)
                               for m, level in zip(gene.matrices, option) if level.factorised))
            else:
                return None
        table.append(np.array(row))
    return table


def spectral_fill(genome: np.ndarray, space: SearchSpace, lost: Sequence[np.ndarray], window: tuple[int, int]) -> np.ndarray:
    """``genome`` raised into the budget window one factor level at a time, each time the level
    that loses least output energy per parameter removed, ``argmin_i (lost_i[l+1] − lost_i[l]) /
    (cost_i[l+1] − cost_i[l])`` over the kept blocks' matrix genes — SVD-LLM's truncation rule on
    the whitened spectra. A baseline that removes whole blocks leaves a remainder below the window;
    filled by random levels (the repair) every kept matrix gets factorised a little, each past its
    break-even rank, where this factorises few matrices further. A genome in or above the window is
    returned unchanged."""
    low, _ = window
    costs = space.costs
    x = np.asarray(genome, dtype=np.int64).copy()
    total = costs.total(x)
    while total <= low:
        levels = [i for i in costs.movable(x, +1) if not costs.removal[i]]
        if not levels:
            break
        step = [(lost[i][x[i] + 1] - lost[i][x[i]]) / max(costs.delta(x, i, +1), 1) for i in levels]
        i = levels[int(np.argmin(step))]
        total += costs.delta(x, i, +1)
        x[i] += 1
    return x


def greedy_baseline(evaluator, space: SearchSpace, window: tuple[int, int], label: str) -> Allocation:
    """The greedy depth choice scored by ``evaluator`` (a search's
    :class:`~sieve.search.evaluator.CandidateEvaluator`) at full fidelity: the test split is never read."""
    removal = {g.matrices[0].block: (i, j) for i, g in enumerate(space.genes)
               for j, o in enumerate(g.options) if o[0].removes_block}

    def cost(removed: frozenset[int]) -> float:
        genome = space.lower.copy()
        for block in removed:
            gene, level = removal[block]
            genome[gene] = level
        return evaluator.evaluate(genome, evaluator.plan.final).value

    k = blocks_within(space, window[1])
    blocks = greedy_blocks(cost, len(removal), k)
    evaluator.pruner.restore()
    log.info("%s: blocks %s after %d validation evaluations", label, list(blocks),
             sum(len(removal) - i for i in range(k)))
    return Allocation({}, removed_blocks=frozenset(blocks))
