"""``task_acc``: ``1 − accuracy`` on the validation examples."""

from __future__ import annotations

from typing import ClassVar, Literal

from sieve.scoring.results import choice_metrics
from sieve.search.fitness.base import FITNESS, Measurement, TaskFitness


@FITNESS.register
class TaskAccuracy(TaskFitness):
    name: Literal["task_acc"] = "task_acc"

    from_scores: ClassVar[bool] = True

    def measure(self, model, inputs, indices):
        return self.value_of(inputs.scorer.score(model, indices))

    def value_of(self, scores):
        return Measurement(1.0 - choice_metrics(scores)["acc"], scores.n_tokens)
