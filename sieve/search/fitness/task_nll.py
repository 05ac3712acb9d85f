"""``task_nll`` (default): mean choice-normalised NLL of the gold continuation on the validation
examples, ``−log softmax_j(log p(cont_j | ctx))[gold]``; the plain NLL for single-continuation
tasks. A continuous signal: accuracy alone is too coarse to rank candidates on a few hundred examples."""

from __future__ import annotations

from typing import ClassVar, Literal

from sieve.metrics.quality import task_loss
from sieve.scoring.results import choice_metrics
from sieve.search.fitness.base import FITNESS, Measurement, TaskFitness


@FITNESS.register
class TaskNLL(TaskFitness):
    name: Literal["task_nll"] = "task_nll"

    from_scores: ClassVar[bool] = True

    def measure(self, model, inputs, indices):
        return self.value_of(inputs.scorer.score(model, indices))

    def value_of(self, scores):
        return Measurement(task_loss(choice_metrics(scores)), scores.n_tokens)
