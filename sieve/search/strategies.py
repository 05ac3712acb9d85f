"""The three ways a :class:`~sieve.search.evaluator.CandidateEvaluator` scores a stage's candidates.

One interface (:class:`EvaluationStrategy`: ``evaluate(evaluator, genomes, stage)`` and ``close``),
one class per mode, chosen by the :class:`~sieve.search.execution.ExecutionPlan`; callers see
measurements in the order of their genomes, never the mode:

* :class:`Sequential` — one candidate at a time through the evaluator's pruner, applied in the
  order that writes fewest weights (:func:`write_order`);
* :class:`Lanes` — model replicas, each with its own in-place pruner and scorer on its own CUDA
  stream: while the host prepares the next lane, the GPU runs the previous lanes' forwards;
* :class:`Packed` — up to ``limit`` candidates side by side in one forward, each through its own
  pruned weights (:mod:`sieve.models.batched`).

Every mode holds the same dense weights and kernels, so a genome's result does not depend on the
mode in which it was scored, except that candidates per forward shape the last bits (tested).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sieve.models.adapters import find_matrices
from sieve.models.batched import CandidateModel
from sieve.models.forward import forward_features
from sieve.prune.batched import CandidateWeights
from sieve.prune.pruner import ModelPruner
from sieve.search.fitness import Fitness, FitnessInputs, Measurement
from sieve.search.space import SearchSpace
from sieve.search.stages import StagePlan

log = logging.getLogger(__name__)


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


class CandidateEvaluator(Protocol):
    """What a strategy reads of the evaluator that runs it (:class:`sieve.search.evaluator.CandidateEvaluator`)."""

    model: torch.nn.Module
    space: SearchSpace
    pruner: ModelPruner
    fitness: Fitness
    inputs: FitnessInputs
    plan: StagePlan
    timings: Timings


class EvaluationStrategy(Protocol):
    """Measurements of ``genomes`` at ``stage``, in order; ``close`` frees what the mode built."""

    def evaluate(self, evaluator: CandidateEvaluator, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]: ...

    def close(self) -> None: ...


def write_order(states: Sequence[Sequence[Hashable]], sizes: Sequence[int], start: Sequence[Hashable]) -> list[int]:
    """An order to apply candidates in place that writes few bytes: from the state ``start``, always
    the candidate whose per-matrix states (``states[i][j]``, matrix ``j`` of ``sizes[j]`` weights)
    differ least from the last one applied (greedy nearest neighbour, ties to the lower index). An
    in-place pruner writes only the matrices that changed, and a candidate's result does not depend
    on what was applied before it, so the order changes the time only."""
    codes: dict[Hashable, int] = {}
    table = np.array([[codes.setdefault(s, len(codes)) for s in row] for row in [start, *states]], dtype=np.int64)
    weight = np.asarray(sizes, dtype=np.float64)
    left, order, last = list(range(len(states))), [], table[0]
    while left:
        cost = ((table[1:][left] != last) * weight).sum(1)
        pick = left.pop(int(np.argmin(cost)))
        order.append(pick)
        last = table[1 + pick]
    return order


def _sync(model: torch.nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Sequential:
    """One candidate at a time through the evaluator's own pruner (in place: fewest writes first)."""

    def evaluate(self, evaluator: CandidateEvaluator, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        allocations = [evaluator.space.allocation(g) for g in genomes]
        pruner = evaluator.pruner
        order = list(range(len(allocations)))
        if pruner.mode == "in_place" and len(allocations) >= 3:
            matrices = pruner.matrices
            states = [[ModelPruner.state_of(m, a) for m in matrices] for a in allocations]
            order = write_order(states, [m.numel for m in matrices], [pruner.current[m.name] for m in matrices])
        by_index = {}
        for i in order:
            start, replays = time.perf_counter(), evaluator.inputs.scorer.replays
            pruner.apply(allocations[i])
            _sync(evaluator.model)
            applied = time.perf_counter()
            by_index[i] = evaluator.fitness.measure(evaluator.model, evaluator.inputs, evaluator.plan.indices(stage),
                                                    evaluator.plan.fraction(stage))
            _sync(evaluator.model)
            end = time.perf_counter()
            evaluator.timings.add(Timings(applied - start, end - applied, end - start, 1,
                                          int(evaluator.inputs.scorer.replays > replays)))
        return [by_index[i] for i in range(len(genomes))]

    def close(self) -> None:
        pass


@dataclass
class Lane:
    """A replica of the model with its own in-place pruner and scorer (its own CUDA graphs), whose
    candidates run on its own CUDA stream."""

    model: torch.nn.Module
    pruner: ModelPruner
    inputs: FitnessInputs
    stream: torch.cuda.Stream | None = None

    def context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()


def replica(model: torch.nn.Module, space: SearchSpace, pruner: ModelPruner, inputs: FitnessInputs) -> Lane:
    """A lane: a copy of ``model`` with ``pruner``'s dense weights (whatever ``model`` holds now), an
    in-place pruner sharing ``pruner``'s thresholds and factors (read-only), and a scorer of its own."""
    copy_ = copy.deepcopy(model)
    names = {m.name for m in space.matrices}
    matrices = [m for m in find_matrices(copy_) if m.name in names]
    with torch.no_grad():
        for m in matrices:
            m.weight.copy_(pruner.dense[m.name])
    lane_pruner = ModelPruner(matrices, pruner.method, pruner.stats, pruner.lowrank, mode="in_place", contiguous=True)
    lane_pruner.thresholds, lane_pruner.factors = pruner.thresholds, pruner.factors
    device = next(model.parameters()).device
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    return Lane(copy_, lane_pruner, dataclasses.replace(inputs), stream)  # the same inputs, a scorer of its own


@dataclass
class Lanes:
    """``replicas`` beside the evaluator's own model: one candidate per lane, its scoring graph queued
    on the lane's stream, all read at the end of the group."""

    replicas: list[Lane] = field(default_factory=list)

    @classmethod
    def build(cls, evaluator: CandidateEvaluator, lanes: int) -> Lanes:
        replicas = [replica(evaluator.model, evaluator.space, evaluator.pruner, evaluator.inputs)
                    for _ in range(lanes - 1)]
        device = next(evaluator.model.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.info("%d lanes: model replicas evaluating candidates side by side on %s", lanes, device)
        return cls(replicas)

    def evaluate(self, evaluator: CandidateEvaluator, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        lanes = [Lane(evaluator.model, evaluator.pruner, evaluator.inputs), *self.replicas]
        indices, fraction = evaluator.plan.indices(stage), evaluator.plan.fraction(stage)
        results: list[Measurement] = []
        for start in range(0, len(genomes), len(lanes)):
            group = list(zip(lanes, genomes[start:start + len(lanes)]))
            begin, apply_s = time.perf_counter(), 0.0
            replays = sum(lane.inputs.scorer.replays for lane, _ in group)
            reads = []
            for lane, genome in group:
                with lane.context():
                    t0 = time.perf_counter()
                    lane.pruner.apply(evaluator.space.allocation(genome))
                    apply_s += time.perf_counter() - t0
                    reads.append(evaluator.fitness.launch(lane.model, lane.inputs, indices, fraction))
            for (lane, _), read in zip(group, reads, strict=True):
                with lane.context():
                    results.extend(read())
            total = time.perf_counter() - begin
            graphed = sum(lane.inputs.scorer.replays for lane, _ in group) - replays
            evaluator.timings.add(Timings(apply_s, total - apply_s, total, len(group), graphed))
        return results

    def close(self) -> None:
        for lane in self.replicas:
            lane.pruner.release()
        self.replicas.clear()


@dataclass
class Packed:
    """Candidates side by side in one forward: ``weights`` holds up to ``limit`` candidates' pruned
    matrices and ``model`` is the evaluator's model with its pruned linears reading them. Built on
    first use and undone by :meth:`close`. Groups of ``per_forward(stage)`` candidates (the last one
    padded with copies of its last genome), graph replays queued back to back, read at the end."""

    limit: int
    weights: CandidateWeights | None = None
    model: CandidateModel | None = None

    def _open(self, evaluator: CandidateEvaluator) -> None:
        if self.model is None:
            forward_features(evaluator.model)  # probed (and cached) on the model's own modules
            self.weights = CandidateWeights(evaluator.pruner, self.limit)
            self.model = CandidateModel(evaluator.model, evaluator.space.matrices, self.weights.weights_of())
            log.info("%d candidates per forward at most (%s per stage)", self.limit,
                     ", ".join(str(evaluator.plan.per_forward(s, self.limit)) for s in range(evaluator.plan.final + 1)))

    def evaluate(self, evaluator: CandidateEvaluator, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        self._open(evaluator)
        k = evaluator.plan.per_forward(stage, self.limit)
        indices, fraction = evaluator.plan.indices(stage), evaluator.plan.fraction(stage)
        scorer = evaluator.inputs.scorer
        begin, apply_s, replays = time.perf_counter(), 0.0, scorer.replays
        reads = []
        for start in range(0, len(genomes), k):
            group = genomes[start:start + k]
            t0 = time.perf_counter()
            self.weights.write([evaluator.space.allocation(g) for g in group])
            apply_s += time.perf_counter() - t0
            self.model.count.value = k
            reads.append((len(group), evaluator.fitness.launch(evaluator.model, evaluator.inputs, indices, fraction,
                                                               copies=k)))
        results = [m for n, read in reads for m in read()[:n]]
        total = time.perf_counter() - begin
        graphed = (scorer.replays - replays) * k
        evaluator.timings.add(Timings(apply_s, total - apply_s, total, len(genomes), min(graphed, len(genomes))))
        return results

    def close(self) -> None:
        if self.model is not None:
            self.model.restore()
        self.model = self.weights = None
