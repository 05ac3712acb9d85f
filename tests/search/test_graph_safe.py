"""Pruning on the fly with CUDA graphs: a search's memory-saving mode (one copy of the weights)
replays one captured forward per stage like the in-place mode, with the in-place mode's results."""

from __future__ import annotations

import logging

import pytest
import torch

from sieve.search.run import prepare
from sieve.search.rundir import RunDir


def test_a_cpu_search_prunes_on_the_fly_without_graph_buffers(search_config, tmp_path):
    evaluator = prepare(search_config(pruner_mode="on_the_fly"), RunDir(tmp_path / "r").stats).evaluator
    assert evaluator.pruner.mode == "on_the_fly" and evaluator.pruner.live_thresholds == {}
    assert not evaluator.inputs.cuda_graphs
    evaluator.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_on_the_fly_graphs_equal_in_place_graphs(search_config, feasible_genomes, tmp_path, caplog):
    """The same genomes at every stage, in place and on the fly, both replaying graphs: the same
    fitness bit for bit; an N:M space on the fly is scored eagerly, said once."""
    values, evaluators = {}, {}
    for mode in ("in_place", "on_the_fly"):
        prepared = prepare(search_config(pruner_mode=mode, device="cuda"), RunDir(tmp_path / mode).stats)
        evaluator = evaluators[mode] = prepared.evaluator
        genomes = feasible_genomes(prepared, 6)
        values[mode] = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
        assert evaluator.inputs.cuda_graphs and evaluator.timings.graphed == evaluator.timings.candidates == 12
    assert values["on_the_fly"] == values["in_place"]
    assert len(evaluators["on_the_fly"].pruner.live_thresholds) == len(evaluators["on_the_fly"].space.matrices)
    for evaluator in evaluators.values():
        evaluator.close()
    with caplog.at_level(logging.WARNING):
        nm = prepare(search_config(pruner_mode="on_the_fly", device="cuda", space="nm"), RunDir(tmp_path / "nm").stats)
    assert not nm.evaluator.inputs.cuda_graphs and nm.evaluator.pruner.live_thresholds == {}
    assert "CUDA graphs are off" in caplog.text
