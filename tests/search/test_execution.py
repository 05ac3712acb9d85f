"""The execution plan: one pure decision, demands refused in one line, preferences replaced and said once."""

from __future__ import annotations

import pytest

from sieve.config import load_yaml, validate
from sieve.errors import SieveError
from sieve.resources import builtin_file, builtin_names
from sieve.search.config import SearchConfig
from sieve.search.execution import ExecutionPlan, ModelFacts, choose_mode, plan_execution

GIB = 2**30
CPU = ModelFacts.before_loading("cpu")
GPU = ModelFacts(device="cuda", free_bytes=60 * GIB, matrix_bytes=GIB // 4, weight_bytes=GIB // 3)


def gpu_preset(**fields) -> SearchConfig:
    return validate(SearchConfig, {**load_yaml(builtin_file("configs", "gpu")), "budget": 0.2, **fields})


def test_auto_mode_keeps_a_dense_copy_only_where_it_fits() -> None:
    assert choose_mode("auto", "cpu", 10 * GIB, None) == "in_place"
    assert choose_mode("auto", "cuda", 10 * GIB, 20 * GIB) == "in_place"
    assert choose_mode("auto", "cuda", 10 * GIB, 20 * GIB - 1) == "on_the_fly"
    assert choose_mode("auto", "cuda", 1, 80 * GIB, streamed=True) == "on_the_fly"
    assert choose_mode("in_place", "cuda", 10 * GIB, 0) == "in_place"
    assert choose_mode("on_the_fly", "cpu", 1, None) == "on_the_fly"
    with pytest.raises(ValueError, match="pruner mode"):
        choose_mode("fast", "cpu", 1, None)


@pytest.mark.parametrize("space", builtin_names("search_spaces"))
@pytest.mark.parametrize("fitness", ["task_nll", "task_acc", "kl", "general_kl", "task_nll+general_weight"])
@pytest.mark.parametrize("facts", [CPU, GPU], ids=["cpu", "gpu"])
def test_the_gpu_preset_plans_every_space_and_fitness(space, fitness, facts) -> None:
    """The preset's values are preferences: every built-in space and fitness gets a plan, with at
    most one note per setting that fell back, and several candidates per forward exactly where they apply."""
    name, _, weighted = fitness.partition("+")
    cfg = gpu_preset(space=space, fitness={"name": name}, general_weight=0.5 if weighted else 0.0)
    plan = plan_execution(cfg, facts)
    packs = cfg.space.not_thresholded is None and fitness in ("task_nll", "task_acc")
    assert plan.candidates_per_forward == (24 if packs else 1)
    assert plan.strategy == ("packed" if packs else "sequential")
    graphs_note = cfg.space.depth and facts is GPU  # a space that removes blocks is scored eagerly
    assert len(plan.notes) == (0 if packs else 1) + graphs_note
    if graphs_note:
        assert plan.notes[0] == ("--cuda-graphs (preset or default) does not apply: the space removes decoder blocks "
                                 "(each candidate runs another stack of blocks); scoring eagerly")
        assert not plan.cuda_graphs
    if packs:
        assert plan_execution(cfg, facts, {"batch_candidates"}) == plan.model_copy(
            update={"demanded": ("batch_candidates",)})
    else:
        assert plan.notes[-1].startswith("--batch-candidates 24 (preset or default) does not apply: ")
        with pytest.raises(SieveError, match="^--batch-candidates 24: "):
            plan_execution(cfg, facts, {"batch_candidates"})


def test_workers_take_one_candidate_per_forward_said_once(search_config) -> None:
    plan = plan_execution(search_config(batch_candidates=24, workers=2), CPU, {"workers"})
    assert (plan.workers, plan.candidates_per_forward, plan.strategy) == (2, 1, "sequential")
    assert plan.notes == ("--batch-candidates 24 (preset or default) does not apply: candidates are evaluated on "
                          "Ray workers, one per forward; one candidate per forward",)


def test_demands_that_cannot_apply_are_one_line(search_config) -> None:
    streamed = ModelFacts(device="cuda", free_bytes=GIB, matrix_bytes=GIB, weight_bytes=2 * GIB, streamed=True)
    with pytest.raises(SieveError, match="^--pruner-mode in_place: decoder blocks are streamed from host memory$"):
        plan_execution(search_config(pruner_mode="in_place"), streamed, {"pruner_mode"})
    plan = plan_execution(search_config(), streamed)
    assert (plan.pruner_mode, plan.cuda_graphs, plan.streamed) == ("on_the_fly", False, True)
    with pytest.raises(SieveError, match="^--cuda-graphs: there is no GPU$"):
        plan_execution(search_config(cuda_graphs=True), CPU, {"cuda_graphs"})
    assert plan_execution(search_config(), CPU).notes == ()  # graphs are moot on the CPU: nothing to say
    with pytest.raises(SieveError, match="the space has factorised"):
        plan_execution(search_config(space="lowrank", pruner_mode="on_the_fly", cuda_graphs=True), GPU,
                       {"cuda_graphs"})


def test_graph_safe_on_the_fly_where_every_level_is_a_threshold(search_config) -> None:
    plan = plan_execution(search_config(pruner_mode="on_the_fly"), GPU)
    assert (plan.pruner_mode, plan.cuda_graphs, plan.graph_safe) == ("on_the_fly", True, True)
    plan = plan_execution(search_config(pruner_mode="on_the_fly", space="nm", budget=0.3), GPU)
    assert (plan.cuda_graphs, plan.graph_safe) == (False, False) and "N:M" in plan.notes[0]


def test_a_resume_must_reproduce_the_result_shaping_settings() -> None:
    recorded = ExecutionPlan(strategy="packed", candidates_per_forward=24)
    assert ExecutionPlan(strategy="packed", candidates_per_forward=24, lanes=1).mismatch(recorded) == []
    assert ExecutionPlan(candidates_per_forward=3, strategy="packed").mismatch(recorded) == [
        "candidates_per_forward: run has 24, now 3"]
    assert ExecutionPlan(packed_rows=False, strategy="packed", candidates_per_forward=24).mismatch(recorded) == [
        "packed_rows: run has True, now False"]
