"""How a search evaluates its candidates: one :class:`ExecutionPlan`, decided once, before anything slow.

A search can score candidates one after another in place or on the fly, replay each stage as a CUDA
graph, run model replicas side by side on their own streams (*lanes*), or score several candidates
in one forward (*packed*), in this process or on Ray actors. Which of these apply depends on the
space (are all its levels precomputed per-weight thresholds?), the fitness (is it read from task
scores alone?), the model (its bytes, plain ``Linear`` matrices, blocks streamed from host memory)
and the device (a GPU, its free memory). :func:`plan_execution` is the one pure function that
decides, in a fixed order like peft's ``dispatch_*`` list, and every other part reads its answer.

Every setting is either **demanded** (the user typed the flag: a value that cannot apply is one
``error:`` line naming the flag and why) or a **preference** (a default or a preset's value: where
it cannot apply, the plan falls back to the best value that can and records one note, logged once).
The plan is decided twice from the same function: in preflight with the facts known before loading
(so a demand that cannot apply fails before anything is loaded or written) and once the model is
loaded (its memory known). The final plan is written into the run directory, shown by
``sieve report`` and compared on resume: the settings that shape results in their last bits
(candidates per forward, packed rows) must match the recorded ones.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sieve.config import Frozen
from sieve.errors import SieveError
from sieve.search.config import SearchConfig

log = logging.getLogger(__name__)

Strategy = Literal["sequential", "lanes", "packed"]
#: plan fields that shape a candidate's fitness in its last bits: a resume must reproduce them
RESULT_SHAPING = ("candidates_per_forward", "packed_rows")


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs to know of the model and its device. Before loading only the device is
    known (``None`` for the rest: the plan then assumes it fits); :meth:`of` measures a loaded one."""

    device: str
    free_bytes: int | None = None
    matrix_bytes: int | None = None
    weight_bytes: int | None = None
    streamed: bool = False
    not_linear: str | None = None

    @classmethod
    def before_loading(cls, device: str) -> ModelFacts:
        return cls(device=torch.device(device).type)

    @classmethod
    def of(cls, workspace: Any, matrices: Any, max_gpu_memory: float | None = None) -> ModelFacts:
        """Facts of a loaded :class:`~sieve.workspace.Workspace` whose prunable matrices are ``matrices``
        (free memory within ``max_gpu_memory`` GiB when set)."""
        from sieve.models.batched import unsupported
        from sieve.workspace import free_memory

        model = workspace.model
        return cls(
            device=workspace.device.type,
            free_bytes=free_memory(workspace.device, max_gpu_memory),
            matrix_bytes=sum(m.weight.numel() * m.weight.element_size() for m in matrices),
            weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
            streamed=workspace.loaded.streamer is not None,
            not_linear=unsupported(matrices),
        )


class ExecutionPlan(Frozen):
    """How candidates are evaluated. ``notes``: every preference that fell back, and why."""

    strategy: Strategy = "sequential"
    workers: int = 0
    pruner_mode: Literal["in_place", "on_the_fly"] = "in_place"
    streamed: bool = False
    cuda_graphs: bool = False
    graph_safe: bool = False
    candidates_per_forward: int = 1
    lanes: int = 1
    packed_rows: bool = True
    demanded: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for logs and ``sieve report``."""
        where = f"{self.workers} Ray workers" if self.workers else "in this process"
        how = {"sequential": "one candidate at a time", "lanes": f"{self.lanes} lanes side by side",
               "packed": f"up to {self.candidates_per_forward} candidates per forward"}[self.strategy]
        return (f"{how}, {where}; pruning {self.pruner_mode.replace('_', ' ')}"
                f"{', CUDA graphs' if self.cuda_graphs else ''}{', blocks streamed' if self.streamed else ''}"
                f"{', packed rows' if self.packed_rows else ', length buckets only'}")

    def mismatch(self, recorded: ExecutionPlan) -> list[str]:
        """The result-shaping settings where this plan differs from a run's recorded one."""
        return [f"{name}: run has {getattr(recorded, name)!r}, now {getattr(self, name)!r}"
                for name in RESULT_SHAPING if getattr(recorded, name) != getattr(self, name)]

    def log_notes(self) -> None:
        for note in self.notes:
            log.warning("%s", note)


def not_thresholded(config: SearchConfig) -> str | None:
    """Why not every level of the search space is a precomputed threshold of a per-weight score —
    what graph-safe on-the-fly pruning and several candidates per forward apply — or ``None``
    (each primitive declares its own: :attr:`~sieve.search.space.SpaceSpec.not_thresholded`)."""
    return config.space.not_thresholded


def not_from_scores(config: SearchConfig) -> str | None:
    """Why the fitness is not a function of the task scorer's scores alone (what lanes and several
    candidates per forward read asynchronously), or ``None``."""
    if not config.fitness.from_scores:
        return f"the {config.fitness.name} fitness is not computed from task scores alone"
    if config.general_weight > 0:
        return "--general-weight adds a general-text KL term"
    return None


def choose_mode(requested: str, device: str, matrix_bytes: int | None, free_bytes: int | None,
                streamed: bool = False) -> Literal["in_place", "on_the_fly"]:
    """The pruner mode for ``requested`` (``auto``, ``in_place`` or ``on_the_fly``).

    ``auto`` picks ``in_place`` wherever its dense copy fits with room to spare — on the CPU, or on
    a GPU whose free memory is at least twice the pruned matrices' bytes (the copy plus as much
    again for activations) — and ``on_the_fly`` otherwise, or when blocks are streamed from host
    memory. ``in_place`` costs one pruning pass per candidate; ``on_the_fly`` one per forward, which
    a search with several batches (and a shared-prefix forward per batch) repeats many times per
    candidate: on an H100, SmolLM2-135M's 30-generation search ran 968 candidates in 107 s
    in place (fp32) and in 268 s on the fly (bf16).
    """
    if requested not in ("auto", "in_place", "on_the_fly"):
        raise ValueError(f"pruner mode must be auto, in_place or on_the_fly, got {requested!r}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if streamed:
        return "on_the_fly"
    if device == "cpu" or free_bytes is None or matrix_bytes is None:
        return "in_place"
    return "in_place" if free_bytes >= 2 * matrix_bytes else "on_the_fly"


class _Decisions:
    """Demand-or-preference bookkeeping while a plan is decided."""

    def __init__(self, demanded: Collection[str]) -> None:
        self.demanded = frozenset(demanded)
        self.notes: list[str] = []

    def cannot(self, field: str, value: Any, reason: str, fallback: str) -> None:
        """``field = value`` cannot apply because ``reason``: an error if the user typed it, else a note."""
        flag = f"--{field.replace('_', '-')}"
        shown = flag if isinstance(value, bool) else f"{flag} {value}"
        if isinstance(value, bool) and not value:
            shown = f"--no-{field.replace('_', '-')}"
        if field in self.demanded:
            raise SieveError(f"{shown}: {reason}")
        self.notes.append(f"{shown} (preset or default) does not apply: {reason}; {fallback}")


def plan_execution(config: SearchConfig, model: ModelFacts, demanded: Collection[str] = ()) -> ExecutionPlan:
    """The execution plan of ``config`` on ``model``'s device; ``demanded``: the config fields the
    user typed. Decided in this order, each step seeing the ones before:

    1. where: in this process, or ``workers`` Ray actors (each decides its own memory-bound steps);
    2. pruner mode (:func:`choose_mode`); in place is impossible with streamed blocks;
    3. CUDA graphs: a GPU, resident blocks, a fixed stack of blocks (no depth genes), and in place —
       or on the fly where every level is a per-weight threshold (graph-safe: fixed per-matrix
       threshold buffers); a space that removes blocks needs them resident;
    4. lanes: in this process, graphs, a fitness read from task scores; replicas (≈ 3× the
       weights each) within half the free memory;
    5. candidates per forward: in this process, no lanes, in place, plain ``Linear`` matrices,
       thresholded levels, a fitness read from task scores; their weights within half the free memory.

    Lanes and several candidates per forward exclude each other: a demanded one wins over a
    preferred one; with both only preferred, candidates per forward (the faster, measured).
    """
    d = _Decisions(demanded)
    in_process = config.in_process
    workers = config.workers if not in_process else 0
    if model.streamed and config.pruner_mode == "in_place":
        d.cannot("pruner_mode", "in_place", "decoder blocks are streamed from host memory", "pruning on the fly")
    mode = choose_mode("auto" if model.streamed else config.pruner_mode, model.device, model.matrix_bytes,
                       model.free_bytes, model.streamed)
    threshold_reason = not_thresholded(config)
    score_reason = not_from_scores(config)
    depth_reason = config.space.changes_depth
    if depth_reason is not None and model.streamed:
        raise SieveError(f"{depth_reason}: every decoder block must be resident on the device, but this model's blocks "
                         "are streamed from host memory (it does not fit); use a device with more memory")

    graph_safe = mode == "on_the_fly" and threshold_reason is None
    graphs = config.cuda_graphs
    if graphs:
        reason = ("there is no GPU" if model.device != "cuda" else
                  "decoder blocks are streamed from host memory" if model.streamed else
                  depth_reason if depth_reason is not None else
                  f"pruning on the fly replays a graph only where every level is a per-weight threshold "
                  f"({threshold_reason})" if mode == "on_the_fly" and not graph_safe else None)
        if reason is not None:
            graphs = False
            if model.device == "cuda" or "cuda_graphs" in d.demanded:  # on the CPU the default is moot
                d.cannot("cuda_graphs", True, reason, "scoring eagerly")
    graph_safe = graph_safe and graphs

    wants_lanes, wants_packed = config.lanes > 1, config.batch_candidates > 1
    if wants_lanes and wants_packed:
        if {"lanes", "batch_candidates"} <= d.demanded:
            raise SieveError("--lanes and --batch-candidates exclude each other (one replica per lane, or several "
                             "candidates in one model's forward): give one")
        loser = "lanes" if "lanes" not in d.demanded else "batch_candidates"
        d.cannot(loser, getattr(config, loser), f"--{'batch-candidates' if loser == 'lanes' else 'lanes'} is used",
                 "one" if loser == "lanes" else "one candidate per forward")
        wants_lanes, wants_packed = loser != "lanes", loser != "batch_candidates"

    lanes = 1
    if wants_lanes:
        reason = ("candidates are evaluated on Ray workers" if not in_process else
                  "lanes replay CUDA graphs (a GPU, and in-place pruning or graph-safe on-the-fly pruning)"
                  if not graphs else score_reason)
        if reason is not None:
            d.cannot("lanes", config.lanes, reason, "one lane")
        else:
            lanes = config.lanes
            if model.free_bytes is not None and model.weight_bytes:
                fit = max(1, 1 + int(model.free_bytes // 2 // (3 * model.weight_bytes)))
                if fit < lanes:
                    d.cannot("lanes", config.lanes, f"{fit} replicas fit in half the free GPU memory", f"using {fit}")
                    lanes = fit

    per_forward = 1
    if wants_packed:
        reason = ("candidates are evaluated on Ray workers, one per forward" if not in_process else
                  "the weights fit only once, so they are pruned on the fly" if mode == "on_the_fly" else
                  model.not_linear or threshold_reason or score_reason)
        if reason is not None:
            d.cannot("batch_candidates", config.batch_candidates, reason, "one candidate per forward")
        else:
            per_forward = config.batch_candidates
            if model.free_bytes is not None and model.matrix_bytes:
                fit = max(1, int(model.free_bytes // 2 // model.matrix_bytes))
                if fit < per_forward:
                    d.cannot("batch_candidates", config.batch_candidates,
                             f"the candidates' weights fit {fit} times in half the free memory",
                             f"using {fit}" if fit > 1 else "one candidate per forward")
                    per_forward = fit

    strategy: Strategy = "packed" if per_forward > 1 else "lanes" if lanes > 1 else "sequential"
    return ExecutionPlan(
        strategy=strategy, workers=workers, pruner_mode=mode, streamed=model.streamed, cuda_graphs=graphs,
        graph_safe=graph_safe, candidates_per_forward=per_forward, lanes=lanes, packed_rows=config.packed_rows,
        demanded=tuple(sorted(d.demanded & _PLAN_FIELDS)), notes=tuple(d.notes),
    )


#: the config fields the plan decides (what a demand can be)
_PLAN_FIELDS = frozenset({"pruner_mode", "cuda_graphs", "lanes", "batch_candidates", "packed_rows", "workers",
                          "ray_address", "max_gpu_memory"})
