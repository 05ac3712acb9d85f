"""Lanes: model replicas that evaluate candidates side by side (on a GPU, each on its own CUDA stream).
On the CPU they run one after another, which is enough to check that a genome's result does not
depend on its lane and that the replicas really are pruned."""

from __future__ import annotations

import logging

import pytest
import torch

from sieve.search.evaluator import _replica, _usable_lanes
from sieve.search.run import prepare
from sieve.search.rundir import RunDir


def test_every_lane_gives_a_genome_the_single_lane_result(search_config, feasible_genomes, tmp_path, caplog):
    cfg = search_config(lanes=3)
    prepared = prepare(cfg, RunDir(tmp_path / "r").stats)
    evaluator = prepared.evaluator
    assert evaluator.lanes == []  # prepare asked for 3; the CPU has no CUDA graphs: one, with a warning
    assert "lanes: 3 requested, 1 used" in caplog.text
    genomes = feasible_genomes(prepared, 7)
    alone = [evaluator.evaluate(g, stage).value for stage in (0, 1) for g in genomes]
    evaluator.lanes = [_replica(evaluator.model, prepared.space, evaluator.pruner, evaluator.inputs) for _ in range(2)]
    before = evaluator.timings.candidates
    together = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
    assert together == alone  # bit for bit, whichever lane (7 genomes over 3 lanes: every lane used)
    assert evaluator.timings.candidates - before == 14
    lane = evaluator.lanes[1]  # 7 = 3 + 3 + 1 per stage: genome 5 was the last one on lane 2
    evaluator.pruner.apply(prepared.space.allocation(genomes[5]))
    mine = {m.name: m.weight for m in evaluator.pruner.matrices}
    assert all(torch.equal(m.weight, mine[m.name]) for m in lane.pruner.matrices)
    assert any(bool((m.weight == 0).any()) for m in lane.pruner.matrices)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(evaluator.model.parameters(), lane.model.parameters()))
    mine, its = evaluator.inputs, lane.inputs  # the same fitness inputs, a scorer (plans, graphs) of its own
    assert its.scorer is not mine.scorer and its.task is mine.task
    assert (its.batch_size, its.cuda_graphs, its.packing) == (mine.batch_size, mine.cuda_graphs, mine.packing)


def test_lanes_are_refused_where_they_cannot_help(search_config, tmp_path, caplog):
    prepared = prepare(search_config(), RunDir(tmp_path / "r").stats)
    with caplog.at_level(logging.WARNING):
        assert _usable_lanes(8, False, prepared.evaluator.fitness, prepared.workspace, None) == 1
    assert "they need CUDA graphs" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="lanes run on CUDA streams")
def test_cuda_lanes_on_their_streams_equal_one_lane(search_config, feasible_genomes, tmp_path):
    """On a GPU every lane replays its own graphs on its own stream; the results are those of the
    main lane bit for bit (a missing stream dependency would show here as a different value)."""
    prepared = prepare(search_config(lanes=3, device="cuda"), RunDir(tmp_path / "r").stats)
    evaluator = prepared.evaluator
    assert len(evaluator.lanes) == 2 and all(lane.stream is not None for lane in evaluator.lanes)
    genomes = feasible_genomes(prepared, 11)
    alone = [evaluator.evaluate(g, stage).value for stage in (0, 1) for g in genomes]
    together = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
    assert together == alone
    assert evaluator.timings.graphed == evaluator.timings.candidates == 44
