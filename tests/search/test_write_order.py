"""A generation's candidates are applied in an order that writes few matrices; their results do not
depend on it."""

from __future__ import annotations

import numpy as np

from sieve.prune.pruner import ModelPruner
from sieve.search.operators import switch_levels
from sieve.search.run import prepare
from sieve.search.rundir import RunDir
from sieve.search.strategies import write_order


def test_write_order_takes_the_nearest_candidate_each_time() -> None:
    start = ["a", "a", "a", "a"]
    states = [["b", "b", "b", "a"],  # 3 changed from start
              ["a", "b", "a", "a"],  # 1 from start
              ["b", "b", "a", "a"],  # 1 from candidate 1
              ["b", "b", "b", "b"]]  # 1 from candidate 0
    assert write_order(states, [1, 1, 1, 1], start) == [1, 2, 0, 3]
    assert write_order(states, [1, 1, 100, 1], start) == [1, 2, 0, 3]
    assert write_order([], [1], ["a"]) == []
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = rng.integers(0, 3, (7, 9))
        sizes = rng.integers(1, 50, 9)
        order = write_order(table.tolist(), sizes.tolist(), [0] * 9)
        assert sorted(order) == list(range(7))
        last, left = np.zeros(9, dtype=int), set(range(7))
        for pick in order:  # each pick is a cheapest remaining candidate
            cost = {i: int(((table[i] != last) * sizes).sum()) for i in left}
            assert cost[pick] == min(cost.values())
            left.remove(pick)
            last = table[pick]


def test_evaluation_in_write_order_gives_each_candidate_its_own_result(search_config, feasible_genomes,
                                                                        tmp_path) -> None:
    """Near and far variants of one genome, shuffled: evaluated together they are written in the
    greedy order (fewer matrices written than in the given order), and each value is bit for bit its
    value evaluated alone."""
    prepared = prepare(search_config(), RunDir(tmp_path / "r").stats)
    evaluator, space = prepared.evaluator, prepared.space
    base = feasible_genomes(prepared, 1)[0]
    rng = np.random.default_rng(1)
    genomes = [base, *(switch_levels(base, space.costs, rng, n) for n in (6, 1, 12, 2, 1))]
    alone = [evaluator.evaluate(g, 0).value for g in genomes]
    evaluator.pruner.apply(space.allocation(genomes[0]))

    current = [evaluator.pruner.current[m.name] for m in space.matrices]

    def changes(order):
        states = [[ModelPruner.state_of(m, space.allocation(genomes[i])) for m in space.matrices] for i in order]
        return sum(sum(a != b for a, b in zip(x, y, strict=True)) for x, y in zip([current, *states], states))

    matrices = evaluator.pruner.matrices
    states = [[ModelPruner.state_of(m, space.allocation(g)) for m in matrices] for g in genomes]
    order = write_order(states, [m.numel for m in matrices], [evaluator.pruner.current[m.name] for m in matrices])
    assert order != list(range(len(genomes))) and changes(order) < changes(range(len(genomes)))
    evaluator.pruner.writes.clear()
    together = [m.value for m in evaluator.evaluate_many(genomes, 0)]
    assert evaluator.pruner.writes["stacked"] + evaluator.pruner.writes["single"] == changes(order)
    assert together == alone
    evaluator.pruner.apply(space.allocation(genomes[0]))
    evaluator.pruner.writes.clear()
    for genome in genomes:  # the given order, one at a time: more writes, the same values
        evaluator.evaluate(genome, 0)
    assert evaluator.pruner.writes["stacked"] + evaluator.pruner.writes["single"] == changes(range(len(genomes)))
