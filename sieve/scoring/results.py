"""What scoring returns: the log-likelihood of every choice of every example, and the metrics read
from it.

The **score** of a continuation is ``Σ_t log softmax(logits_{p_t})[cont_t]`` over the positions ``p_t``
that predict its tokens (:mod:`sieve.scoring.plan`): log-softmax in float32, the sum in float64. A
choice is *greedy* when every one of its tokens is the argmax there (lm-eval's ``is_greedy``).
:func:`choice_metrics` turns the scores into accuracy and likelihood metrics, as lm-eval does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sieve.errors import SieveError


@dataclass(frozen=True)
class ChoiceScores:
    """Per scored example: ``logprobs[k][j]`` = log p(continuation j | context), float64;
    ``greedy[k][j]`` = every continuation token is the argmax (lm-eval's ``is_greedy``). ``indices``
    are the scored examples (positions in the :class:`~sieve.scoring.encode.EncodedTask`), ``golds``
    their gold choices, ``n_tokens`` the unpadded tokens run through the model."""

    logprobs: list[np.ndarray]
    greedy: list[np.ndarray]
    indices: tuple[int, ...]
    golds: tuple[int, ...]
    n_tokens: int


def choice_metrics(scores: ChoiceScores, golds: Sequence[int] | None = None) -> dict[str, float]:
    """Accuracy and likelihood metrics of scored examples (``golds`` default: ``scores.golds``).

    * ``acc``: prediction ``argmax_j logprob_j`` (ties go to the lowest index, as ``np.argmax``
      and lm-eval do) equals gold; for single-continuation examples (``loglikelihood`` tasks)
      it is lm-eval's greedy match instead.
    * ``nll``: mean over examples of ``-logprob(gold continuation)`` (unnormalised, in nats).
    * ``choice_nll``: mean of ``-log softmax(logprobs)[gold]``, the gold's likelihood
      normalised over the choices; uniform guessing gives ``log(n_choices)``, 0 for one choice.
    """
    golds = scores.golds if golds is None else tuple(int(g) for g in golds)
    if len(golds) != len(scores.logprobs):
        raise SieveError(f"{len(golds)} golds for {len(scores.logprobs)} scored examples")
    if not golds:
        return {"acc": float("nan"), "nll": float("nan"), "choice_nll": float("nan"), "n": 0}
    acc, nll, choice_nll = [], [], []
    for lp, greedy, gold in zip(scores.logprobs, scores.greedy, golds, strict=True):
        if len(lp) == 1:
            acc.append(float(greedy[0]))
        else:
            acc.append(float(int(np.argmax(lp)) == gold))
        nll.append(-float(lp[gold]))
        log_norm = float(np.logaddexp.reduce(lp))
        choice_nll.append(log_norm - float(lp[gold]))
    return {
        "acc": float(np.mean(acc)),
        "nll": float(np.mean(nll)),
        "choice_nll": float(np.mean(choice_nll)),
        "n": len(golds),
    }

