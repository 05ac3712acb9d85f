"""Search fitness: what a candidate is judged by (lower is better), one registry.

* ``task_nll`` (default) — mean choice-normalised NLL of the gold continuation on the task's
  validation examples, ``−log softmax_j(log p(cont_j | ctx))[gold]``; for single-continuation tasks
  the plain NLL of the continuation. A continuous signal: accuracy alone is too coarse to rank
  candidates on a few hundred examples.
* ``task_acc`` — ``1 − accuracy`` on the same examples.
* ``kl`` — mean per-token ``KL(dense ‖ pruned)`` of next-token distributions over the task inputs
  (context + gold continuation).
* ``general_kl`` — the same KL on general text only (EvoPress's fitness; task-agnostic baseline).

``--general-weight λ`` adds ``λ · KL(dense ‖ pruned)`` on general text to any of them, to protect
fluency. Dense references keep only the top-``k`` log-probabilities per position (memory bounded):
KL is taken over the ``k`` top tokens plus one bucket for the remaining mass,
``Σ_{i∈K} p_i log(p_i/q_i) + p_rest log(p_rest/q_rest)``, a lower bound that is exact in the limit
``k → vocab``.

A new fitness is one module in this package: a subclass of :class:`TaskFitness` (a pydantic model
owning its parameters) decorated with ``@FITNESS.register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from sieve.config import Frozen
from sieve.errors import SieveError
from sieve.metrics.scorer import TaskScorer
from sieve.registry import Registry
from sieve.scoring.buckets import PackingChoice
from sieve.scoring.encode import EncodedTask
from sieve.scoring.plan import BATCH_SIZE
from sieve.scoring.results import ChoiceScores


@dataclass
class FitnessInputs:
    """The data a fitness reads: encoded validation examples and general-text blocks, and the
    scorer that scores the former (one plan per stage, CUDA graphs where ``cuda_graphs``)."""

    task: EncodedTask
    general_blocks: torch.Tensor | None = None
    batch_size: int = BATCH_SIZE
    cuda_graphs: bool = False
    packing: PackingChoice = "auto"
    scorer: TaskScorer = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = TaskScorer(self.task, self.batch_size, cuda_graphs=self.cuda_graphs, packing=self.packing)


@dataclass
class Measurement:
    value: float
    tokens: int


class TaskFitness(Frozen, ABC):
    """What a candidate is judged by on validation example ``indices`` (lower is better).

    Parameters are pydantic fields; state computed from the dense model in :meth:`prepare` lives
    in private attributes."""

    name: str
    needs_general: ClassVar[bool] = False
    #: the value is a function of the task scorer's scores alone (:meth:`value_of`), so it can be
    #: read after an asynchronous scoring launch (model replicas on their own CUDA streams)
    from_scores: ClassVar[bool] = False
    #: the value over examples ``indices`` reads those examples alone (not batches of neighbours), so
    #: a held-out selection stage can be scored beside the validation stages (early stopping)
    per_document: ClassVar[bool] = True

    def prepare(self, model: nn.Module, inputs: FitnessInputs) -> None:
        """Compute whatever the dense model must provide (called once, on the dense model)."""

    @abstractmethod
    def measure(self, model: nn.Module, inputs: FitnessInputs, indices: Sequence[int]) -> Measurement:
        ...

    def value_of(self, scores: ChoiceScores) -> Measurement:
        """The fitness of scored validation examples (fitnesses with ``from_scores``)."""
        raise NotImplementedError(f"{self.name} is not computed from task scores alone")


FITNESS: Registry[TaskFitness] = Registry("fitness", "sieve.search.fitness")
FitnessSpec = FITNESS.field(TaskFitness)


@dataclass
class TopKReference:
    """Dense top-k log-probabilities per position of a fixed set of padded sequences."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    logp: list[torch.Tensor]
    index: list[torch.Tensor]

    @classmethod
    @torch.inference_mode()
    def build(cls, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> TopKReference:
        device = next(model.parameters()).device
        logps, idxs = [], []
        for ids, mask in batches:
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            top = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
            logps.append(top.values)
            idxs.append(top.indices)
        return cls(batches, logps, idxs)

    @torch.inference_mode()
    def kl(self, model: nn.Module, which: Sequence[int]) -> Measurement:
        device = next(model.parameters()).device
        total, count, tokens = 0.0, 0, 0
        for b in which:
            ids, mask = self.batches[b]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logq_all = torch.log_softmax(logits.float(), -1)
            logp = self.logp[b]
            logq = logq_all.gather(-1, self.index[b])
            p = logp.exp()
            p_rest = (1 - p.sum(-1)).clamp_min(1e-12)
            q_rest = (1 - logq.exp().sum(-1)).clamp_min(1e-12)
            kl = (p * (logp - logq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
            valid = mask.to(device).bool()
            total += float(kl[valid].sum())
            count += int(valid.sum())
            tokens += int(valid.sum())
        return Measurement(total / max(count, 1), tokens)


def general_batches(inputs: FitnessInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if inputs.general_blocks is None:
        raise SieveError("this fitness needs general text blocks")
    blocks, size = inputs.general_blocks, inputs.batch_size
    return [(blocks[i : i + size], torch.ones_like(blocks[i : i + size])) for i in range(0, len(blocks), size)]


class Fitness:
    """A task fitness plus ``λ`` × general-text KL: ``F = task + λ · KL_general``."""

    def __init__(self, task: TaskFitness, general_weight: float = 0.0, top_k: int = 32) -> None:
        if general_weight < 0:
            raise SieveError(f"--general-weight must be >= 0, got {general_weight}")
        self.task = task.model_copy()  # private state per evaluator
        self.needs_general = general_weight > 0 or self.task.needs_general
        self.general_weight = general_weight
        self.top_k = top_k
        self.general: TopKReference | None = None

    def prepare(self, model: nn.Module, inputs: FitnessInputs) -> None:
        self.task.prepare(model, inputs)
        if self.general_weight > 0:
            self.general = TopKReference.build(model, general_batches(inputs), self.top_k)

    @property
    def asynchronous(self) -> bool:
        """Whether :meth:`launch` queues the work and returns before it finishes."""
        return self.task.from_scores and self.general is None

    def launch(self, model: nn.Module, inputs: FitnessInputs, indices: Sequence[int], fraction: float,
               copies: int = 1) -> Callable[[], list[Measurement]]:
        """Start measuring; the returned function gives one :class:`Measurement` per copy (``copies``
        candidates side by side in one forward, :mod:`sieve.models.batched`: asynchronous fitnesses
        only). Asynchronous (a CUDA graph queued on the current stream) where :attr:`asynchronous`,
        else measured at once."""
        if self.asynchronous:
            read = inputs.scorer.launch(model, indices, copies)
            return lambda: [self.task.value_of(scores) for scores in read()]
        if copies != 1:
            raise SieveError(f"{self.task.name}{' with --general-weight' if self.general else ''} measures one "
                             "candidate per forward")
        result = self.measure(model, inputs, indices, fraction)
        return lambda: [result]

    def measure(self, model: nn.Module, inputs: FitnessInputs, indices: Sequence[int], fraction: float) -> Measurement:
        result = self.task.measure(model, inputs, indices)
        if self.general is not None:
            n = max(1, int(np.ceil(fraction * len(self.general.batches))))
            general = self.general.kl(model, range(n))
            result = Measurement(result.value + self.general_weight * general.value, result.tokens + general.tokens)
        return result
