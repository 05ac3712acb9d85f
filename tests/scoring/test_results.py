"""Choice scores' metrics: by hand, and on a model that finds every token equally likely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sieve.errors import SieveError
from sieve.scoring.plan import score_examples
from sieve.scoring.results import ChoiceScores, choice_metrics

VOCAB = 300  # the conftest's tiny_lm


def test_choice_metrics_by_hand() -> None:
    scores = ChoiceScores(
        logprobs=[np.array([-1.0, -2.0]), np.array([-3.0, -1.0]), np.array([-2.0, -2.0]),
                  np.array([-4.0])],
        greedy=[np.array([False, False]), np.array([False, True]), np.array([True, True]),
                np.array([True])],
        indices=(0, 1, 2, 3), golds=(0, 0, 1, 0), n_tokens=10)
    m = choice_metrics(scores)
    # acc: right, wrong, tie -> index 0 -> wrong, single continuation -> greedy -> right
    assert m["acc"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx((1 + 3 + 2 + 4) / 4)
    want = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(2)), math.log(2), 0.0]
    assert m["choice_nll"] == pytest.approx(np.mean(want))
    assert m["n"] == 4
    flipped = choice_metrics(scores, golds=[1, 1, 0, 0])
    assert flipped["acc"] == pytest.approx(0.75)
    with pytest.raises(SieveError, match="golds for"):
        choice_metrics(scores, golds=[0])


def test_uniform_model_has_log_n_choice_nll(random_task, tiny_lm) -> None:
    encoded = random_task(6, 5, single_token=True)
    model = tiny_lm()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every token equally likely
    m = choice_metrics(score_examples(model, encoded))
    want = np.mean([math.log(len(c)) for c in encoded.continuations])
    assert m["choice_nll"] == pytest.approx(want, abs=1e-6)
    assert m["nll"] == pytest.approx(math.log(VOCAB), abs=1e-5)
