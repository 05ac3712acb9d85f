"""Candidate evaluation: apply a genome's masks in place, measure the fitness, keep timings.

:class:`CandidateEvaluator` is what every backend runs: in-process (:class:`InProcessBackend`) or
inside Ray actors (:mod:`sieve.search.ray_backend`). It owns a :class:`~sieve.prune.pruner.ModelPruner`
holding the dense weights, so consecutive candidates only rewrite the matrices whose level changed.
Results depend only on ``(genome, stage)``, which is what makes every backend, and a resumed run,
return the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sieve.data.general import token_blocks
from sieve.errors import SieveError
from sieve.metrics.loglik import encode_task
from sieve.metrics.quality import MAX_LENGTH
from sieve.prune.pruner import ModelPruner, choose_mode
from sieve.search.config import SearchConfig
from sieve.search.fitness import Fitness, FitnessInputs, Measurement
from sieve.search.space import SearchSpace
from sieve.stats.calibrate import Statistics
from sieve.workspace import Workspace, free_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    """Nested validation subsets: stage ``i`` scores the first ``sizes[i]`` of a seeded permutation;
    the best ``promote[i]`` candidates of stage ``i`` go on to stage ``i + 1``."""

    sizes: tuple[int, ...]
    promote: tuple[int, ...]
    order: tuple[int, ...]

    @classmethod
    def build(cls, n_validation: int, stages: Sequence[int], promote: Sequence[int], seed: int) -> StagePlan:
        sizes = tuple(min(s, n_validation) for s in stages) + (n_validation,)
        order = tuple(int(i) for i in np.random.default_rng(seed).permutation(n_validation))
        return cls(sizes, tuple(promote), order)

    @property
    def final(self) -> int:
        return len(self.sizes) - 1

    def indices(self, stage: int) -> list[int]:
        return sorted(self.order[: self.sizes[stage]])

    def fraction(self, stage: int) -> float:
        return self.sizes[stage] / self.sizes[-1]


@dataclass
class Timings:
    """Seconds spent per part of candidate evaluation (summed over candidates); ``graphed``: the
    candidates whose task scoring replayed a CUDA graph."""

    apply: float = 0.0
    forward: float = 0.0
    total: float = 0.0
    candidates: int = 0
    graphed: int = 0

    def add(self, other: Timings) -> None:
        self.apply += other.apply
        self.forward += other.forward
        self.total += other.total
        self.candidates += other.candidates
        self.graphed += other.graphed

    def as_dict(self) -> dict[str, float]:
        return {"apply_s": self.apply, "forward_s": self.forward, "overhead_s": self.total - self.apply - self.forward,
                "total_s": self.total, "candidates": self.candidates, "graphed_candidates": self.graphed}


def _sync(model: torch.nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class CandidateEvaluator:
    model: torch.nn.Module
    space: SearchSpace
    pruner: ModelPruner
    fitness: Fitness
    inputs: FitnessInputs
    plan: StagePlan
    timings: Timings = field(default_factory=Timings)

    def evaluate(self, genome: np.ndarray, stage: int) -> Measurement:
        start, replays = time.perf_counter(), self.inputs.scorer.replays
        self.pruner.apply(self.space.allocation(genome))
        _sync(self.model)
        applied = time.perf_counter()
        result = self.fitness.measure(self.model, self.inputs, self.plan.indices(stage), self.plan.fraction(stage))
        _sync(self.model)
        end = time.perf_counter()
        self.timings.add(Timings(applied - start, end - applied, end - start, 1, int(self.inputs.scorer.replays > replays)))
        return result


def build_evaluator(config: SearchConfig, ws: Workspace, space: SearchSpace, stats: Statistics) -> CandidateEvaluator:
    """The candidate evaluator every backend runs: pruner (dense copy + level thresholds), fitness
    with its dense references, and the stage plan. Built identically in-process and in Ray actors."""
    streamed = ws.loaded.streamer is not None
    matrix_bytes = sum(m.weight.numel() * m.weight.element_size() for m in space.matrices)
    mode = choose_mode(config.pruner_mode, ws.device, matrix_bytes, free_memory(ws.device, config.max_gpu_memory),
                       streamed)
    if config.pruner_mode == "auto":
        log.info("pruner mode: %s (auto; pruned matrices %.2f GiB)", mode, matrix_bytes / 2**30)
    if streamed and mode != "on_the_fly":
        raise SieveError("decoder blocks streamed from host memory need --pruner-mode on_the_fly (or auto)")
    pruner = ModelPruner(space.matrices, config.space.method, stats.per_matrix, config.space.lowrank, mode=mode,
                         device=ws.device if ws.loaded.streamer is not None else None, contiguous=mode == "in_place")
    pruner.precompute_levels(space.row_counts())
    for name in space.factorisable():  # one SVD per matrix, up front: every rank afterwards is a slice
        pruner.factors_of(name)
    encoded = encode_task(ws.task.validation, ws.tokenizer, MAX_LENGTH)
    fitness = Fitness(config.fitness, config.general_weight)
    general_blocks = None
    if fitness.needs_general:
        general_blocks = token_blocks(
            ws.corpus.calibration[::-1], ws.tokenizer, config.general_fitness_blocks, config.calibration.block_len
        )
    graphs = config.cuda_graphs and mode == "in_place" and not streamed and ws.device.type == "cuda"
    inputs = FitnessInputs(encoded, general_blocks, config.batch_size, cuda_graphs=graphs)
    fitness.prepare(ws.model, inputs)
    plan = StagePlan.build(len(encoded), config.stages, config.promote, config.seed)
    return CandidateEvaluator(ws.model, space, pruner, fitness, inputs, plan)


class EvaluationBackend(Protocol):
    """Evaluates candidates at one stage; results in the order of ``genomes``."""

    def evaluate(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]: ...

    def timings(self) -> Timings: ...

    def close(self) -> None: ...


class InProcessBackend:
    def __init__(self, evaluator: CandidateEvaluator) -> None:
        self.evaluator = evaluator

    def evaluate(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        return [self.evaluator.evaluate(g, stage) for g in genomes]

    def timings(self) -> Timings:
        return self.evaluator.timings

    def close(self) -> None:
        self.evaluator.pruner.restore()
