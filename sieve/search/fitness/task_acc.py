"""``task_acc``: ``1 − accuracy`` on the validation examples."""

from __future__ import annotations

from typing import Literal

from sieve.metrics.loglik import metrics
from sieve.search.fitness.base import FITNESS, Measurement, TaskFitness


@FITNESS.register
class TaskAccuracy(TaskFitness):
    name: Literal["task_acc"] = "task_acc"

    def measure(self, model, inputs, indices):
        scores = inputs.scorer.score(model, indices)
        return Measurement(1.0 - metrics(scores)["acc"], scores.n_tokens)
