"""Candidate evaluation: apply a genome's levels, measure the fitness, keep timings.

:class:`CandidateEvaluator` is what every backend runs: in-process (:class:`InProcessBackend`) or
inside Ray actors (:mod:`sieve.search.ray_backend`). It owns a :class:`~sieve.prune.pruner.ModelPruner`
holding the dense weights, so consecutive candidates only rewrite the matrices whose level changed,
and scores them through the strategy its :class:`~sieve.search.execution.ExecutionPlan` names
(:mod:`sieve.search.strategies`: one at a time, lanes, or several per forward). Results depend only
on ``(genome, stage)`` and the plan's result-shaping settings, which is what makes every backend,
and a resumed run, return the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sieve.data.general import token_blocks
from sieve.metrics.quality import MAX_LENGTH
from sieve.models.depth import BlockRemoval
from sieve.prune.pruner import ModelPruner
from sieve.scoring.encode import encode_task
from sieve.search.config import SearchConfig
from sieve.search.execution import ExecutionPlan, ModelFacts, plan_execution
from sieve.search.fitness import Fitness, FitnessInputs, Measurement
from sieve.search.space import SearchSpace
from sieve.search.stages import StagePlan
from sieve.search.strategies import EvaluationStrategy, Lanes, Packed, Sequential, Timings
from sieve.stats.calibrate import Statistics
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class CandidateEvaluator:
    """Applies genomes and measures them through ``strategy`` (:mod:`sieve.search.strategies`)."""

    model: torch.nn.Module
    space: SearchSpace
    pruner: ModelPruner
    fitness: Fitness
    inputs: FitnessInputs
    plan: StagePlan
    execution: ExecutionPlan = field(default_factory=ExecutionPlan)
    strategy: EvaluationStrategy = field(default_factory=Sequential)
    timings: Timings = field(default_factory=Timings)

    def evaluate_many(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        """Measurements of ``genomes`` at ``stage``, in order."""
        return self.strategy.evaluate(self, genomes, stage)

    def evaluate(self, genome: np.ndarray, stage: int) -> Measurement:
        """One candidate's measurement (through the same strategy as in a search)."""
        return self.evaluate_many([genome], stage)[0]

    def close(self) -> None:
        """Dense weights and the model's own modules back; lanes and shared weights freed."""
        self.strategy.close()
        self.pruner.restore()


def build_evaluator(config: SearchConfig, ws: Workspace, space: SearchSpace, stats: Statistics,
                    execution: ExecutionPlan | None = None, demanded: Collection[str] = ()) -> CandidateEvaluator:
    """The candidate evaluator every backend runs: pruner (dense copy + level thresholds), fitness
    with its dense references, the stage plan, and the strategy of ``execution`` (by default the
    plan of ``config`` on this workspace, :func:`~sieve.search.execution.plan_execution`). Built
    identically in-process and in Ray actors."""
    if execution is None:
        execution = plan_execution(config, ModelFacts.of(ws, space.matrices, config.max_gpu_memory), demanded)
        execution.log_notes()
    mode = execution.pruner_mode
    pruner = ModelPruner(space.matrices, config.space.scoring, stats.per_matrix, config.space.lowrank, mode=mode,
                         device=ws.device if execution.streamed else None, contiguous=mode == "in_place",
                         graph_safe=execution.graph_safe,
                         depth=BlockRemoval(ws.model) if config.space.depth else None)
    pruner.precompute_levels(space.row_counts())
    for name in space.factorisable():  # one SVD per matrix, up front: every rank afterwards is a slice
        pruner.factors_of(name)
    held_out = ws.task.selection if config.patience else ()  # the selection stage's documents (early stopping)
    encoded = encode_task((*ws.task.validation, *held_out), ws.tokenizer, MAX_LENGTH)
    fitness = Fitness(config.fitness, config.general_weight)
    general_blocks = None
    if fitness.needs_general:
        general_blocks = token_blocks(
            ws.corpus.calibration[::-1], ws.tokenizer, config.general_fitness_blocks, config.calibration.block_len
        )
    inputs = FitnessInputs(encoded, general_blocks, config.batch_size, cuda_graphs=execution.cuda_graphs,
                           packing="auto" if execution.packed_rows else False)
    fitness.prepare(ws.model, inputs)
    plan = StagePlan.build(len(ws.task.validation), config.stages, config.promote, config.seed, config.offspring,
                           n_selection=len(held_out))
    evaluator = CandidateEvaluator(ws.model, space, pruner, fitness, inputs, plan, execution)
    if execution.strategy == "packed":
        evaluator.strategy = Packed(execution.candidates_per_forward)
    elif execution.strategy == "lanes":
        evaluator.strategy = Lanes.build(evaluator, execution.lanes)
    return evaluator


class EvaluationBackend(Protocol):
    """Evaluates candidates at one stage; results in the order of ``genomes``."""

    def evaluate(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]: ...

    def timings(self) -> Timings: ...

    def close(self) -> None: ...


class InProcessBackend:
    def __init__(self, evaluator: CandidateEvaluator) -> None:
        self.evaluator = evaluator

    def evaluate(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        return self.evaluator.evaluate_many(genomes, stage)

    def timings(self) -> Timings:
        return self.evaluator.timings

    def close(self) -> None:
        self.evaluator.close()
