"""Several candidates per forward (``batch_candidates``): each candidate's own pruned weights, side by
side in one forward. Checked on the CPU: the weights written are the one-candidate pruner's bit for
bit, a candidate's fitness does not depend on the other candidates of its forward nor on its place
among them, and it agrees with one-candidate evaluation up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sieve.errors import SieveError
from sieve.models.forward import forward_features
from sieve.search.checkpoint import Checkpoint
from sieve.search.execution import ModelFacts, plan_execution
from sieve.search.run import prepare
from sieve.search.rundir import RunDir
from sieve.search.stages import StagePlan
from sieve.search.strategies import Sequential


def test_candidates_per_forward_depend_on_the_stage_alone() -> None:
    plan = StagePlan.build(64, [8, 16], [6, 2], seed=0, offspring=24)
    assert [plan.per_forward(s, 16) for s in range(3)] == [12, 6, 2]
    assert [plan.per_forward(s, 5) for s in range(3)] == [5, 3, 2]  # 24 in five forwards of 5; 6 in two of 3
    assert [plan.per_forward(s, 1) for s in range(3)] == [1, 1, 1]


def test_shared_forward_weights_and_fitness(search_config, feasible_genomes, tmp_path) -> None:
    cfg = search_config(batch_candidates=3)
    prepared = prepare(cfg, RunDir(tmp_path / "r").stats)
    evaluator, space = prepared.evaluator, prepared.space
    genomes = feasible_genomes(prepared, 5)
    k = evaluator.plan.per_forward(0, 3)
    assert k == 2  # 4 offspring in forwards of at most 3: two of 2
    together = [m.value for m in evaluator.evaluate_many(genomes, 0)]
    features = forward_features(evaluator.model)  # probed before the swap: every fast path kept
    assert features.position_ids and features.logits_to_keep and features.cache_argument
    shared = evaluator.strategy
    assert evaluator.execution.strategy == "packed" and shared.limit == 3
    # the last forward held genome 4 alone: every slot holds its weights, the one-candidate pruner's bits
    evaluator.pruner.apply(space.allocation(genomes[4]))
    for m in space.matrices:
        slots = shared.weights.weights_of()[m.name]
        assert slots.shape[0] == 3 and all(torch.equal(slots[c], m.weight) for c in range(3))
    evaluator.evaluate_many(genomes[1:3], 0)
    for slot, genome in enumerate(genomes[1:3]):
        evaluator.pruner.apply(space.allocation(genome))
        assert all(torch.equal(shared.weights.weights_of()[m.name][slot], m.weight) for m in space.matrices)
    # a candidate's fitness does not depend on its neighbours or its place in the forward
    reordered = [m.value for m in evaluator.evaluate_many([genomes[4], genomes[2], genomes[0], genomes[1],
                                                           genomes[3]], 0)]
    assert reordered == [together[4], together[2], together[0], together[1], together[3]]
    assert evaluator.evaluate(genomes[2], 0).value == together[2]
    # and it is the one-candidate fitness up to rounding
    evaluator.close()
    assert all(type(m.module).__name__ == "Linear" for m in space.matrices)
    assert type(evaluator.model.get_submodule(space.matrices[0].name)).__name__ == "Linear"
    evaluator.strategy = Sequential()
    alone = [evaluator.evaluate(g, 0).value for g in genomes]
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    assert together != [alone[0]] * 5


def test_shared_forward_refuses_what_it_cannot_do(search_config) -> None:
    """Typed (a demand), what cannot apply is one error line; from a preset, one per forward."""
    cpu = ModelFacts.before_loading("cpu")
    with pytest.raises(SieveError, match="--lanes and --batch-candidates exclude each other"):
        plan_execution(search_config(batch_candidates=2, lanes=2), cpu, {"lanes", "batch_candidates"})
    with pytest.raises(SieveError, match="--batch-candidates 2: candidates are evaluated on Ray workers"):
        plan_execution(search_config(batch_candidates=2, workers=2), cpu, {"batch_candidates"})
    with pytest.raises(SieveError, match="--batch-candidates 2: the kl fitness is not computed from task scores"):
        plan_execution(search_config(batch_candidates=2, fitness={"name": "kl"}), cpu, {"batch_candidates"})
    plan = plan_execution(search_config(batch_candidates=2, workers=2), cpu, {"workers"})
    assert (plan.strategy, plan.candidates_per_forward, plan.workers) == ("sequential", 1, 2)
    gpu = ModelFacts(device="cuda", free_bytes=2**30, matrix_bytes=2**20, weight_bytes=2**20)
    plan = plan_execution(search_config(batch_candidates=2, lanes=2), gpu, {"lanes"})
    assert (plan.candidates_per_forward, plan.lanes, plan.strategy) == (1, 2, "lanes")
    assert plan.notes[0].startswith("--batch-candidates 2 (preset or default) does not apply: --lanes is used")


def test_search_with_shared_forwards_resumes_bit_identically(search_config, run_search, tmp_path) -> None:
    """Two candidates per forward, a search stopped after one generation and resumed: the same cache
    (every fitness to the bit), population and best allocation as the search run at once."""
    whole = run_search(search_config(batch_candidates=2, generations=3), tmp_path / "whole", report=False)
    assert whole["timings"]["candidates"] == whole["evaluations"]
    run_search(search_config(batch_candidates=2, generations=1), tmp_path / "part", report=False)
    resumed = run_search(None, tmp_path / "part", overrides={"generations": 3}, report=False)
    assert resumed["best_genome"] == whole["best_genome"]
    a, b = (Checkpoint.load(tmp_path / name / "checkpoint" / "state.json") for name in ("whole", "part"))
    assert a.cache == b.cache and a.pop_x == b.pop_x and a.pop_f == b.pop_f


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_shared_forwards_graphed_equal_eager_and_alone(search_config, feasible_genomes, tmp_path) -> None:
    """On a GPU: each group's forward replayed as a CUDA graph (queued back to back, read at the end)
    gives eager scoring's bits, and a candidate alone in a (padded) forward its in-group bits."""
    values = {}
    for graphs in (True, False):
        prepared = prepare(search_config(batch_candidates=3, device="cuda", cuda_graphs=graphs),
                           RunDir(tmp_path / f"r{graphs}").stats)
        evaluator = prepared.evaluator
        genomes = feasible_genomes(prepared, 7)
        values[graphs] = [m.value for stage in (0, 1) for m in evaluator.evaluate_many(genomes, stage)]
        assert evaluator.evaluate(genomes[5], 1).value == values[graphs][7 + 5]
        assert evaluator.timings.graphed == (evaluator.timings.candidates if graphs else 0)
        evaluator.close()
    assert values[True] == values[False]


def test_auto_on_the_fly_scores_one_candidate_per_forward(search_config) -> None:
    """Pruning on the fly is what ``auto`` picks when the weights fit only once: a preset's
    ``batch_candidates`` then falls back to one per forward, said once; typed, it is an error."""
    tight = ModelFacts(device="cuda", free_bytes=3 * 2**19, matrix_bytes=2**20, weight_bytes=2**21)
    plan = plan_execution(search_config(batch_candidates=3), tight)
    assert (plan.pruner_mode, plan.candidates_per_forward) == ("on_the_fly", 1)
    assert len(plan.notes) == 1 and "the weights fit only once" in plan.notes[0]
    with pytest.raises(SieveError, match="--batch-candidates 3: the weights fit only once"):
        plan_execution(search_config(batch_candidates=3), tight, {"batch_candidates"})
    roomy = ModelFacts(device="cuda", free_bytes=9 * 2**20, matrix_bytes=2**20, weight_bytes=2**21)
    assert plan_execution(search_config(batch_candidates=8), roomy).candidates_per_forward == 4  # ⌊free/2 / bytes⌋


@pytest.mark.parametrize(("space", "budget", "why"), [("nm", 0.3, r"prunes in N:M patterns"),
                                                      ("lowrank", 0.5, r"factorised \(low-rank\) levels")])
def test_shared_forward_needs_unstructured_thresholds(space, budget, why, search_config, tmp_path) -> None:
    """Several candidates per forward write precomputed unstructured thresholds only: typed, any
    other level is one error line naming the space's reason; from a preset, one per forward."""
    cfg = search_config(space=space, budget=budget, batch_candidates=2)
    with pytest.raises(SieveError, match=why):
        plan_execution(cfg, ModelFacts.before_loading("cpu"), {"batch_candidates"})
    prepared = prepare(cfg, RunDir(tmp_path / "r").stats)
    assert prepared.evaluator.execution.candidates_per_forward == 1
    assert isinstance(prepared.evaluator.strategy, Sequential)
