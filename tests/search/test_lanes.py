"""Lanes: model replicas that evaluate candidates side by side (on a GPU, each on its own CUDA stream).
On the CPU they run one after another, which is enough to check that a genome's result does not
depend on its lane and that the replicas really are pruned."""

from __future__ import annotations

import pytest
import torch

from sieve.errors import SieveError
from sieve.search.execution import ModelFacts, plan_execution
from sieve.search.run import prepare
from sieve.search.rundir import RunDir
from sieve.search.strategies import Lanes, replica


def test_every_lane_gives_a_genome_the_single_lane_result(search_config, feasible_genomes, tmp_path, caplog):
    cfg = search_config(lanes=3)
    prepared = prepare(cfg, RunDir(tmp_path / "r").stats)
    evaluator = prepared.evaluator
    assert evaluator.execution.lanes == 1  # asked for 3 as a preference; the CPU has no CUDA graphs: one, said once
    assert evaluator.execution.strategy == "sequential"
    assert caplog.text.count("--lanes 3 (preset or default) does not apply: lanes replay CUDA graphs") == 1
    genomes = feasible_genomes(prepared, 7)
    alone = [evaluator.evaluate(g, stage).value for stage in (0, 1) for g in genomes]
    evaluator.strategy = Lanes([replica(evaluator.model, prepared.space, evaluator.pruner, evaluator.inputs)
                                for _ in range(2)])
    before = evaluator.timings.candidates
    together = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
    assert together == alone  # bit for bit, whichever lane (7 genomes over 3 lanes: every lane used)
    assert evaluator.timings.candidates - before == 14
    lane = evaluator.strategy.replicas[1]  # 7 = 3 + 3 + 1 per stage: genome 5 was the last one on lane 2
    evaluator.pruner.apply(prepared.space.allocation(genomes[5]))
    mine = {m.name: m.weight for m in evaluator.pruner.matrices}
    assert all(torch.equal(m.weight, mine[m.name]) for m in lane.pruner.matrices)
    assert any(bool((m.weight == 0).any()) for m in lane.pruner.matrices)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(evaluator.model.parameters(), lane.model.parameters()))
    mine, its = evaluator.inputs, lane.inputs  # the same fitness inputs, a scorer (plans, graphs) of its own
    assert its.scorer is not mine.scorer and its.task is mine.task
    assert (its.batch_size, its.cuda_graphs, its.packing) == (mine.batch_size, mine.cuda_graphs, mine.packing)


def test_lanes_are_refused_where_they_cannot_help(search_config) -> None:
    """Lanes need CUDA graphs and a fitness read from task scores: typed, that is one error line
    before anything loads; from a preset, one lane and a note."""
    gpu = ModelFacts(device="cuda", free_bytes=10 * 2**30, matrix_bytes=2**20, weight_bytes=2**20)
    with pytest.raises(SieveError, match="--lanes 8: lanes replay CUDA graphs"):
        plan_execution(search_config(lanes=8), ModelFacts.before_loading("cpu"), {"lanes"})
    with pytest.raises(SieveError, match="--lanes 8: the kl fitness is not computed from task scores alone"):
        plan_execution(search_config(lanes=8, fitness={"name": "kl"}), gpu, {"lanes"})
    plan = plan_execution(search_config(lanes=8, general_weight=0.5), gpu)
    assert plan.lanes == 1 and plan.notes == ("--lanes 8 (preset or default) does not apply: --general-weight adds a "
                                              "general-text KL term; one lane",)
    assert plan_execution(search_config(lanes=8), gpu).lanes == 8
    fit = ModelFacts(device="cuda", free_bytes=2 * 3 * 2**20 * 3, matrix_bytes=2**20, weight_bytes=2**20)
    assert plan_execution(search_config(lanes=8), fit).lanes == 4  # 1 + ⌊(free / 2) / (3 × weights)⌋


@pytest.mark.skipif(not torch.cuda.is_available(), reason="lanes run on CUDA streams")
def test_cuda_lanes_on_their_streams_equal_one_lane(search_config, feasible_genomes, tmp_path):
    """On a GPU every lane replays its own graphs on its own stream; the results are those of the
    main lane bit for bit (a missing stream dependency would show here as a different value)."""
    prepared = prepare(search_config(lanes=3, device="cuda"), RunDir(tmp_path / "r").stats)
    evaluator = prepared.evaluator
    replicas = evaluator.strategy.replicas
    assert len(replicas) == 2 and all(lane.stream is not None for lane in replicas)
    genomes = feasible_genomes(prepared, 11)
    alone = [evaluator.evaluate(g, stage).value for stage in (0, 1) for g in genomes]
    together = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
    assert together == alone
    assert evaluator.timings.graphed == evaluator.timings.candidates == 44
