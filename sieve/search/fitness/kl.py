"""KL to the dense model: ``kl`` on the task's inputs (context + gold continuation), ``general_kl``
on general text only (EvoPress's fitness, for the task-agnostic baseline). Dense references keep the
top-``top_k`` log-probabilities per position (see :class:`~sieve.search.fitness.base.TopKReference`)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from sieve.data.batching import pad_right
from sieve.search.fitness.base import FITNESS, TaskFitness, TopKReference, general_batches


@FITNESS.register
class TaskKL(TaskFitness):
    """KL to the dense model on task inputs; one batch of sequences per group of validation examples."""

    name: Literal["kl"] = "kl"
    per_document: ClassVar[bool] = False
    top_k: int = Field(32, ge=1)
    _size: int = PrivateAttr(0)
    _reference: TopKReference | None = PrivateAttr(None)

    def prepare(self, model, inputs):
        enc = inputs.task
        seqs = [
            (tuple(enc.contexts[i]) + tuple(enc.continuations[i][enc.golds[i]]))[-enc.max_length :]
            for i in range(len(enc))
        ]
        self._size = inputs.batch_size
        batches = [pad_right(seqs[i : i + self._size], 0) for i in range(0, len(seqs), self._size)]
        self._reference = TopKReference.build(model, batches, self.top_k)

    def measure(self, model, inputs, indices):
        blocks = sorted({i // self._size for i in indices})
        return self._reference.kl(model, blocks)


@FITNESS.register
class GeneralKL(TaskFitness):
    """KL to the dense model on general text; a stage scores the same fraction of the blocks as of the task."""

    name: Literal["general_kl"] = "general_kl"
    needs_general: ClassVar[bool] = True
    per_document: ClassVar[bool] = False
    top_k: int = Field(32, ge=1)
    _reference: TopKReference | None = PrivateAttr(None)

    def prepare(self, model, inputs):
        self._reference = TopKReference.build(model, general_batches(inputs), self.top_k)

    def measure(self, model, inputs, indices):
        n = len(self._reference.batches)
        fraction = len(indices) / max(len(inputs.task), 1)
        return self._reference.kl(model, range(max(1, int(np.ceil(fraction * n)))))
