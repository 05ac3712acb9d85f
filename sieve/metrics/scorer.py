"""Scoring the same validation subsets again and again, as a search does: one plan per subset, and on
a GPU one CUDA graph per plan.

A search scores a handful of fixed example subsets (its stages) on thousands of weight settings of
one model. Everything about such a call except the weights' *values* is fixed: the token tensors,
the batch shapes, the gather indices (:class:`~sieve.metrics.loglik.ScoringPlan`). A small model's
forward is launch-bound — transformers' Python for 30 decoder layers costs more than the kernels it
launches (SmolLM2-135M on an H100: 248 ms of host time per candidate, 42 ms of GPU time) — so on
CUDA the scorer captures each plan's run once as a CUDA graph (``torch.cuda.CUDAGraph``) and replays
it: the same kernels on the same input and parameter storage, no Python in between.

That is only valid while the model's parameters keep their storage and change only in value — the
in-place pruner's contract (it writes pruned weights with ``copy_`` into the parameters), and the
graph-safe on-the-fly pruner's (every forward computes every weight by the same kernel from
thresholds it refills in place). Blocks streamed from host memory are not, so the evaluator turns
graphs on only for those two.

A graph's numbers are eager scoring's, bit for bit: transformers builds an explicit attention mask
while a graph is captured where an eager forward over unpadded rows would pass ``is_causal`` to
SDPA (another kernel), so every forward of a plan carries a masked pad column and both paths build
the same mask (:class:`~sieve.metrics.loglik.ScoringPlan`). A search's results therefore do not
depend on whether its candidates were graphed (in-process, in Ray actors, in place or on the fly). A
capture that fails — e.g. a forward that reads a tensor's value on the host, as data-dependent
expert routing does — is reported once and that subset is scored eagerly.

A scorer's graphs share one memory pool and one capture stream (its replays run one after another
on a stream), so the activations of all stages cost about as much memory as the largest stage's;
scorers of model replicas replayed side by side have their own (:class:`CapturedRun`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from sieve.models.forward import evaluating
from sieve.scoring.buckets import ForwardCost, PackingChoice
from sieve.scoring.encode import EncodedTask
from sieve.scoring.plan import ScoringPlan
from sieve.scoring.results import ChoiceScores

log = logging.getLogger(__name__)


class CapturedRun:
    """``fn()`` captured as one CUDA graph on ``stream``; calling replays it (on the current stream) and
    returns the same output tensors, now holding the new values. ``fn`` must only launch kernels (no
    host synchronisation).

    A captured matmul keeps the cuBLAS workspace of the stream it was captured on, so graphs that
    may replay at the same time on different streams need capture streams of their own
    (``torch.cuda.graph``'s default is one stream for every graph of the process: model replicas
    replaying side by side then wrote each other's workspace — wrong values and NaNs in 3 of 4
    four-lane runs on an H100, none with one capture stream per scorer)."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, ...]], device: torch.device, pool=None,
                 stream: torch.cuda.Stream | None = None) -> None:
        current = torch.cuda.current_stream(device)
        stream = stream if stream is not None else torch.cuda.Stream(device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            fn()  # warm-up outside the capture: lazy initialisation (cuBLAS workspaces, compiled kernels)
        current.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.outputs = fn()

    def __call__(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.outputs


class TaskScorer:
    """Scores subsets of one encoded task on a model whose weights change in place between calls.

    ``cuda_graphs``: on a CUDA model, replay each subset's plan as a CUDA graph (see the module
    docstring). ``replays`` counts the calls a graph served, ``captures`` the graphs captured.
    """

    def __init__(self, encoded: EncodedTask, batch_size: int, *, cuda_graphs: bool = False,
                 forward_cost: ForwardCost = "auto", packing: PackingChoice = "auto") -> None:
        self.encoded = encoded
        self.batch_size = batch_size
        self.cuda_graphs = cuda_graphs
        self.forward_cost = forward_cost
        self.packing = packing
        self.plans: dict[tuple[tuple[int, ...], int], ScoringPlan] = {}
        self.graphs: dict[tuple[tuple[int, ...], int], CapturedRun | None] = {}
        self.replays = 0
        self.captures = 0
        self._storage: tuple[int, ...] | None = None
        self._pool = None
        self._stream: torch.cuda.Stream | None = None  # this scorer's capture stream (see CapturedRun)

    def plan(self, model: torch.nn.Module, indices: Sequence[int], copies: int = 1) -> ScoringPlan:
        key = (tuple(int(i) for i in indices), copies)
        if key not in self.plans:
            self.plans[key] = ScoringPlan.build(model, self.encoded, key[0], batch_size=self.batch_size,
                                                forward_cost=self.forward_cost, copies=copies, packing=self.packing)
        return self.plans[key]

    def score(self, model: torch.nn.Module, indices: Sequence[int]) -> ChoiceScores:
        return self.launch(model, indices)()[0]

    def launch(self, model: torch.nn.Module, indices: Sequence[int],
               copies: int = 1) -> Callable[[], list[ChoiceScores]]:
        """Start scoring ``indices`` — a graph replay, queued on the current CUDA stream without
        waiting for it — and return the function that reads the scores back, one per copy (eager
        scoring runs at once). The outputs are copied as soon as the replay is queued, so the same
        graph may replay again before they are read (shared forwards queue back to back)."""
        plan = self.plan(model, indices, copies)
        device = next(model.parameters()).device
        if not (self.cuda_graphs and device.type == "cuda"):
            scores = plan.score(model)
            return lambda: scores
        storage = tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))
        if self._storage is None:
            self._storage = storage
        elif self._storage != storage:
            raise ValueError("a TaskScorer's CUDA graphs belong to the parameter storage they were captured on "
                             "(another model, or weights moved since)")
        key = (plan.indices, copies)
        with evaluating(model), torch.inference_mode():
            if key not in self.graphs:
                self.graphs[key] = self._capture(plan, model, device)
            run = self.graphs[key]
            if run is None:
                scores = plan.score(model)
                return lambda: scores
            self.replays += 1
            outputs = tuple(t.clone() for t in run())
        return lambda: plan.collect(*outputs)

    def _capture(self, plan: ScoringPlan, model: torch.nn.Module, device: torch.device) -> CapturedRun | None:
        try:
            if self._pool is None:
                self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(device)
            run = CapturedRun(lambda: plan.run(model), device, self._pool, self._stream)
        except Exception as exc:  # noqa: BLE001 - any capture failure: the same scores, eagerly
            torch.cuda.synchronize(device)
            log.warning("CUDA graph capture of a %d-example scoring plan failed (%s: %s); it is scored eagerly "
                        "(same scores, slower)", len(plan.indices), type(exc).__name__,
                        str(exc).splitlines()[0])
            return None
        self.captures += 1
        log.info("captured a CUDA graph for %d examples × %d copies (%d forwards)", len(plan.indices), plan.copies,
                 len(plan.batches) + (plan.prefix is not None))
        return run
