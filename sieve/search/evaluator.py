"""Candidate evaluation: apply a genome's masks in place, measure the fitness, keep timings.

:class:`CandidateEvaluator` is what every backend runs: in-process (:class:`InProcessBackend`) or
inside Ray actors (:mod:`sieve.search.ray_backend`). It owns a :class:`~sieve.prune.pruner.ModelPruner`
holding the dense weights, so consecutive candidates only rewrite the matrices whose level changed.
Results depend only on ``(genome, stage)``, which is what makes every backend, and a resumed run,
return the same numbers.
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

from sieve.data.general import token_blocks
from sieve.errors import SieveError
from sieve.metrics.loglik import encode_task
from sieve.metrics.quality import MAX_LENGTH
from sieve.models.adapters import find_matrices
from sieve.models.batched import CandidateModel
from sieve.models.batched import unsupported as unsupported_matrices
from sieve.models.forward import forward_features
from sieve.prune.allocation import Allocation
from sieve.prune.batched import CandidateWeights
from sieve.prune.batched import unsupported as unsupported_pruner
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
    the best ``promote[i]`` candidates of stage ``i`` go on to stage ``i + 1``. ``offspring``: the
    candidates a generation's first stage scores."""

    sizes: tuple[int, ...]
    promote: tuple[int, ...]
    order: tuple[int, ...]
    offspring: int = 1

    @classmethod
    def build(cls, n_validation: int, stages: Sequence[int], promote: Sequence[int], seed: int,
              offspring: int = 1) -> StagePlan:
        sizes = tuple(min(s, n_validation) for s in stages) + (n_validation,)
        order = tuple(int(i) for i in np.random.default_rng(seed).permutation(n_validation))
        return cls(sizes, tuple(promote), order, offspring)

    def per_forward(self, stage: int, limit: int) -> int:
        """Candidates per forward at ``stage`` with at most ``limit``: the generation's ``n`` candidates
        of that stage in ``⌈n / limit⌉`` equal forwards, ``⌈n / ⌈n / limit⌉⌉`` each (24 in at most 16:
        two of 12). A function of the configuration alone, so a candidate meets the same shapes in
        every run, resumed or not."""
        n = (self.offspring, *self.promote)[stage]
        k = min(limit, n)
        return -(-n // -(-n // k))

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


@dataclass
class SharedForward:
    """Candidates side by side in one forward (:mod:`sieve.models.batched`): ``weights`` holds up to
    ``limit`` candidates' pruned matrices and ``model`` is the evaluator's model with its pruned
    linears reading them. Built on first use and undone by :meth:`close`."""

    limit: int
    weights: CandidateWeights | None = None
    model: CandidateModel | None = None

    def open(self, evaluator: CandidateEvaluator) -> None:
        if self.model is None:
            forward_features(evaluator.model)  # probed (and cached) on the model's own modules
            self.weights = CandidateWeights(evaluator.pruner, self.limit)
            self.model = CandidateModel(evaluator.model, evaluator.space.matrices, self.weights.weights_of())
            log.info("%d candidates per forward at most (%s per stage)", self.limit,
                     ", ".join(str(evaluator.plan.per_forward(s, self.limit)) for s in range(evaluator.plan.final + 1)))

    def close(self) -> None:
        if self.model is not None:
            self.model.restore()
        self.model = self.weights = None


@dataclass
class CandidateEvaluator:
    """Applies genomes and measures them. With ``lanes`` (replicas of a small model, each on its own
    CUDA stream), :meth:`evaluate_many` applies one candidate per lane and queues its scoring graph,
    then reads them all: while the host prepares the next lane, the GPU runs the previous lanes'
    launch-bound forwards side by side. Every lane holds the same dense weights and the same kernels,
    so a genome's result does not depend on its lane (tested)."""

    model: torch.nn.Module
    space: SearchSpace
    pruner: ModelPruner
    fitness: Fitness
    inputs: FitnessInputs
    plan: StagePlan
    timings: Timings = field(default_factory=Timings)
    lanes: list[Lane] = field(default_factory=list)
    shared: SharedForward | None = None

    def evaluate_many(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        """Measurements of ``genomes`` at ``stage``, in order; several per forward or concurrently over
        lanes where set up."""
        if self.shared is not None:
            return self._evaluate_shared(genomes, stage)
        if not self.lanes:
            allocations = [self.space.allocation(g) for g in genomes]
            by_index = {i: self._evaluate_one(allocations[i], stage) for i in self._write_order(allocations)}
            return [by_index[i] for i in range(len(genomes))]
        lanes = [Lane(self.model, self.pruner, self.inputs), *self.lanes]
        indices, fraction = self.plan.indices(stage), self.plan.fraction(stage)
        results: list[Measurement] = []
        for start in range(0, len(genomes), len(lanes)):
            group = list(zip(lanes, genomes[start:start + len(lanes)]))
            begin, apply_s = time.perf_counter(), 0.0
            replays = sum(lane.inputs.scorer.replays for lane, _ in group)
            reads = []
            for lane, genome in group:
                with lane.context():
                    t0 = time.perf_counter()
                    lane.pruner.apply(self.space.allocation(genome))
                    apply_s += time.perf_counter() - t0
                    reads.append(self.fitness.launch(lane.model, lane.inputs, indices, fraction))
            for (lane, _), read in zip(group, reads, strict=True):
                with lane.context():
                    results.extend(read())
            total = time.perf_counter() - begin
            graphed = sum(lane.inputs.scorer.replays for lane, _ in group) - replays
            self.timings.add(Timings(apply_s, total - apply_s, total, len(group), graphed))
        return results

    def _evaluate_shared(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        """Groups of ``per_forward(stage)`` candidates (the last one padded with copies of its last
        genome), each written into the shared weights and scored by one forward — graph replays queued
        back to back, read at the end."""
        self.shared.open(self)
        k = self.plan.per_forward(stage, self.shared.limit)
        indices, fraction = self.plan.indices(stage), self.plan.fraction(stage)
        begin, apply_s, replays = time.perf_counter(), 0.0, self.inputs.scorer.replays
        reads = []
        for start in range(0, len(genomes), k):
            group = genomes[start:start + k]
            t0 = time.perf_counter()
            self.shared.weights.write([self.space.allocation(g) for g in group])
            apply_s += time.perf_counter() - t0
            self.shared.model.count.value = k
            reads.append((len(group), self.fitness.launch(self.model, self.inputs, indices, fraction, copies=k)))
        results = [m for n, read in reads for m in read()[:n]]
        total = time.perf_counter() - begin
        graphed = (self.inputs.scorer.replays - replays) * k
        self.timings.add(Timings(apply_s, total - apply_s, total, len(genomes), min(graphed, len(genomes))))
        return results

    def evaluate(self, genome: np.ndarray, stage: int) -> Measurement:
        """One candidate's measurement (through the shared forward where set up, as in a search)."""
        return self.evaluate_many([genome], stage)[0]

    def _write_order(self, allocations: Sequence[Allocation]) -> list[int]:
        """:func:`write_order` from the pruner's current state (in place; else the given order)."""
        if self.pruner.mode != "in_place" or len(allocations) < 3:
            return list(range(len(allocations)))
        matrices = self.pruner.matrices
        states = [[ModelPruner.state_of(m, allocation)[0] for m in matrices] for allocation in allocations]
        return write_order(states, [m.numel for m in matrices], [self.pruner.current[m.name] for m in matrices])

    def _evaluate_one(self, allocation: Allocation, stage: int) -> Measurement:
        start, replays = time.perf_counter(), self.inputs.scorer.replays
        self.pruner.apply(allocation)
        _sync(self.model)
        applied = time.perf_counter()
        result = self.fitness.measure(self.model, self.inputs, self.plan.indices(stage), self.plan.fraction(stage))
        _sync(self.model)
        end = time.perf_counter()
        self.timings.add(Timings(applied - start, end - applied, end - start, 1, int(self.inputs.scorer.replays > replays)))
        return result

    def close(self) -> None:
        """Dense weights and the model's own modules back; lanes and shared weights freed."""
        if self.shared is not None:
            self.shared.close()
        self.pruner.restore()
        for lane in self.lanes:
            lane.pruner.release()
        self.lanes.clear()


def build_evaluator(config: SearchConfig, ws: Workspace, space: SearchSpace, stats: Statistics,
                    lanes: int = 1) -> CandidateEvaluator:
    """The candidate evaluator every backend runs: pruner (dense copy + level thresholds), fitness
    with its dense references, and the stage plan. Built identically in-process and in Ray actors;
    ``lanes`` replicas (:meth:`CandidateEvaluator.evaluate_many`) where they can be used and fit;
    ``config.batch_candidates`` per forward where more than one."""
    streamed = ws.loaded.streamer is not None
    matrix_bytes = sum(m.weight.numel() * m.weight.element_size() for m in space.matrices)
    mode = choose_mode(config.pruner_mode, ws.device, matrix_bytes, free_memory(ws.device, config.max_gpu_memory),
                       streamed)
    if config.pruner_mode == "auto":
        log.info("pruner mode: %s (auto; pruned matrices %.2f GiB)", mode, matrix_bytes / 2**30)
    if streamed and mode != "on_the_fly":
        raise SieveError("decoder blocks streamed from host memory need --pruner-mode on_the_fly (or auto)")
    graphable = config.cuda_graphs and not streamed and ws.device.type == "cuda"
    graph_safe = graphable and mode == "on_the_fly" and _not_thresholded(config, space) is None
    pruner = ModelPruner(space.matrices, config.space.method, stats.per_matrix, config.space.lowrank, mode=mode,
                         device=ws.device if ws.loaded.streamer is not None else None, contiguous=mode == "in_place",
                         graph_safe=graph_safe)
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
    graphs = graphable and (mode == "in_place" or graph_safe)
    if graphable and not graphs:
        log.warning("CUDA graphs are off: pruning on the fly replays a graph only with a per-weight score and "
                    "unstructured levels (no N:M patterns, no low-rank levels)")
    inputs = FitnessInputs(encoded, general_blocks, config.batch_size, cuda_graphs=graphs,
                           packing="auto" if config.packed_rows else False)
    fitness.prepare(ws.model, inputs)
    plan = StagePlan.build(len(encoded), config.stages, config.promote, config.seed, config.offspring)
    evaluator = CandidateEvaluator(ws.model, space, pruner, fitness, inputs, plan)
    limit = _shared_limit(config, fitness, pruner, space, ws, matrix_bytes) if config.batch_candidates > 1 else 1
    if limit > 1:
        evaluator.shared = SharedForward(limit)
    if lanes > 1:
        usable = _usable_lanes(lanes, graphs, fitness, ws, config.max_gpu_memory)
        evaluator.lanes = [_replica(ws.model, space, pruner, inputs) for _ in range(usable - 1)]
        if evaluator.lanes:
            torch.cuda.synchronize(ws.device)
            log.info("%d lanes: model replicas evaluating candidates side by side on %s", usable, ws.device)
    return evaluator


def _not_thresholded(config: SearchConfig, space: SearchSpace) -> str | None:
    """Why not every level of ``space`` is a precomputed threshold of a per-weight score — what a
    graph-safe pruner and several candidates per forward apply — or ``None``."""
    method = config.space.method
    if method is None or not method.mask_only:
        return "the scoring method is not a per-weight score (mask-only)"
    if space.factorisable():
        return "the space has factorised (low-rank) levels"
    if space.pattern.structured:
        return "the space prunes in N:M patterns"
    return None


def _shared_limit(config: SearchConfig, fitness: Fitness, pruner: ModelPruner, space: SearchSpace,
                  ws: Workspace, matrix_bytes: int) -> int:
    """``config.batch_candidates``, or why not (one error line): it needs in-place pruning with a
    per-weight score and unstructured levels, plain ``Linear`` matrices and a fitness read from task
    scores alone; the candidates' weights (``limit`` × ``matrix_bytes``) must fit in half the
    free memory, else fewer are used — one: the one-candidate path — said once (per-candidate results
    then differ in the last bits from a run that used more, :mod:`sieve.models.batched`). Where
    ``--pruner-mode auto`` chose to prune on the fly (one copy of the weights is what fits), that is
    one too, said once."""
    if pruner.mode == "on_the_fly" and config.pruner_mode == "auto":
        log.warning("--batch-candidates %d: the weights fit only once, so they are pruned on the fly; candidates "
                    "are scored one per forward (results may differ in the last bits from a run with more)",
                    config.batch_candidates)
        return 1
    reason = (unsupported_pruner(pruner) or unsupported_matrices(space.matrices) or _not_thresholded(config, space)
              or (None if fitness.asynchronous else "the fitness is not computed from task scores alone "
                  "(task_nll or task_acc without --general-weight)"))
    if reason is not None:
        raise SieveError(f"--batch-candidates {config.batch_candidates}: {reason}; use --batch-candidates 1")
    free = free_memory(ws.device, config.max_gpu_memory)
    limit = config.batch_candidates
    if free is not None and limit * matrix_bytes > free // 2:
        limit = max(1, int(free // 2 // matrix_bytes))
        log.warning("--batch-candidates %d: the candidates' weights fit %d times in half the free memory; %s "
                    "(results may differ in the last bits from a run with more)", config.batch_candidates, limit,
                    f"using {limit}" if limit > 1 else "candidates are scored one per forward")
    return limit


def _usable_lanes(requested: int, graphs: bool, fitness: Fitness, ws: Workspace, max_gpu_memory: float | None) -> int:
    """``requested`` lanes where they help and fit, else fewer (said once): lanes need CUDA graphs
    (a GPU, in-place pruning) and a fitness read from task scores alone; each replica holds the
    model, its dense copy and its graphs' activations (≈ 3× the weights), within half the free memory."""
    if not graphs or not fitness.asynchronous:
        log.warning("lanes: %d requested, 1 used (they need CUDA graphs — a GPU and in-place pruning — and the "
                    "task_nll or task_acc fitness without --general-weight)", requested)
        return 1
    weights = sum(p.numel() * p.element_size() for p in ws.model.parameters())
    free = free_memory(ws.device, max_gpu_memory) or 0
    fit = 1 + int(free // 2 // (3 * weights))
    if fit < requested:
        log.warning("lanes: %d requested, %d fit in half of the free GPU memory", requested, max(fit, 1))
    return max(1, min(requested, fit))


def _replica(model: torch.nn.Module, space: SearchSpace, pruner: ModelPruner, inputs: FitnessInputs) -> Lane:
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
