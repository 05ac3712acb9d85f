"""The held-out quality report of one model state: task test split and general perplexity.

``task_acc`` / ``task_nll`` / ``choice_nll`` come from sieve's batched scorer on the task's test
split (the same requests lm-eval builds), ``wiki_ppl`` from held-out general text never used for
statistics, ``sparsity`` is measured by counting zeros in the prunable matrices and ``parameters``
by counting the model's parameters (smaller for a factorised model, equal for a merged one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from pydantic import PositiveInt

from sieve.config import Frozen
from sieve.data.general import GeneralCorpus, token_blocks
from sieve.data.splits import TaskSplits
from sieve.metrics.perplexity import perplexity
from sieve.models.matrix import Matrix
from sieve.prune.pruner import achieved_sparsity
from sieve.scoring.encode import encode_task
from sieve.scoring.plan import BATCH_SIZE, score_examples
from sieve.scoring.results import choice_metrics

MAX_LENGTH = 2048


class EvalSettings(Frozen):
    """The held-out report: task test split and general-text perplexity."""

    test_examples: PositiveInt = 500
    ppl_blocks: PositiveInt = 32
    block_len: PositiveInt = 256
    batch_size: PositiveInt = BATCH_SIZE
    #: after a search, also score every generation's best candidate on the test split (the curve of
    #: ``results.json`` and ``sieve report``): does test accuracy follow the validation fitness?
    #: Reported only, never used to choose: the search's best is still validation's.
    curve: bool = False


@dataclass(frozen=True)
class QualityReport:
    task_acc: float
    task_nll: float
    choice_nll: float
    wiki_ppl: float
    sparsity: float
    parameters: int
    n_test: int
    tokens: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def task_loss(task_metrics: dict[str, float]) -> float:
    """The task NLL sieve reports and searches on: the gold continuation's NLL normalised over the
    choices (``choice_nll``) for multiple-choice tasks, the plain NLL for single continuations
    (where ``choice_nll`` is 0 by definition)."""
    return task_metrics["choice_nll"] if task_metrics["choice_nll"] > 0 else task_metrics["nll"]


class QualityProbe:
    """Tokenises the test split and the held-out blocks once; measures any model state."""

    def __init__(self, tokenizer, task: TaskSplits | None, corpus: GeneralCorpus | None, settings: EvalSettings) -> None:
        self.settings = settings
        self.encoded = encode_task(task.test, tokenizer, MAX_LENGTH) if task is not None else None
        self.blocks = (
            token_blocks(corpus.heldout, tokenizer, settings.ppl_blocks, settings.block_len) if corpus is not None else None
        )

    def measure(self, model: torch.nn.Module, matrices: Sequence[Matrix]) -> QualityReport:
        start = time.perf_counter()
        task = {"acc": float("nan"), "nll": float("nan"), "choice_nll": float("nan"), "n": 0}
        tokens = 0
        if self.encoded is not None:
            scores = score_examples(model, self.encoded, batch_size=self.settings.batch_size)
            task = choice_metrics(scores)
            tokens += scores.n_tokens
        ppl = float("nan")
        if self.blocks is not None:
            ppl = perplexity(model, self.blocks, batch_size=max(1, self.settings.batch_size // 4))
            tokens += self.blocks.numel()
        return QualityReport(
            task_acc=task["acc"],
            task_nll=task_loss(task),
            choice_nll=task["choice_nll"],
            wiki_ppl=ppl,
            sparsity=achieved_sparsity(matrices),
            parameters=sum(p.numel() for p in model.parameters()),
            n_test=int(task["n"]),
            tokens=tokens,
            seconds=time.perf_counter() - start,
        )
