"""Scoring plans against a naive reference: one unpadded forward per request, whatever the batches,
the padding side, the fast path or a shared prefix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sieve.data.splits import TaskExample
from sieve.errors import SieveError
from sieve.scoring.encode import EncodedTask, encode_task
from sieve.scoring.plan import build_jobs, score_examples

MAX_LEN = 24  # the conftest's random_task default


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_model(request: pytest.FixtureRequest, tiny_lm) -> torch.nn.Module:
    return tiny_lm(request.param)


@pytest.mark.parametrize("single_token", [True, False], ids=["fast-path", "slow-path"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_equals_naive(tiny_model: torch.nn.Module, single_token: bool,
                              padding: str, naive_scores, random_task) -> None:
    encoded = random_task(1 if single_token else 2, 12, single_token=single_token)
    reference = naive_scores(tiny_model, encoded)
    for batch_size in (1, 7):
        scores = score_examples(tiny_model, encoded, batch_size=batch_size, padding=padding)
        assert scores.indices == tuple(range(12)) and scores.golds == encoded.golds
        for got, want in zip(scores.logprobs, reference, strict=True):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_fast_path_runs_one_sequence_per_example(random_task, tiny_lm) -> None:
    fast = random_task(3, 10, single_token=True)
    slow = random_task(3, 10, single_token=False)
    assert len(build_jobs(fast, range(10))) == 10
    assert len(build_jobs(slow, range(10))) == sum(len(c) for c in slow.continuations)
    model = tiny_lm()
    scores = score_examples(model, fast)
    assert scores.n_tokens == sum(len(c) for c in fast.contexts)
    assert scores.n_tokens == sum(fast.forward_tokens(i) for i in range(10))


def test_indices_select_and_order(random_task, tiny_lm) -> None:
    encoded = random_task(4, 9, single_token=False)
    model = tiny_lm("gpt2")
    full = score_examples(model, encoded, batch_size=4)
    part = score_examples(model, encoded, indices=[7, 2, 5], batch_size=2)
    assert part.indices == (7, 2, 5) and part.golds == tuple(encoded.golds[i] for i in (7, 2, 5))
    for k, i in enumerate((7, 2, 5)):
        np.testing.assert_allclose(part.logprobs[k], full.logprobs[i], atol=1e-5)


def test_padding_is_invisible_to_each_row(tiny_lm) -> None:
    """A short request batched with a long one scores as when alone."""
    model = tiny_lm(seed=3)
    long_ctx = tuple(range(2, 2 + MAX_LEN))
    encoded = EncodedTask(((5, 6), long_ctx), (((7,), (8,)), ((9,), (10,))), (0, 1), MAX_LEN)
    alone = score_examples(model, encoded, indices=[0], batch_size=1)
    for padding in ("left", "right"):
        together = score_examples(model, encoded, batch_size=2, padding=padding)
        np.testing.assert_allclose(together.logprobs[0], alone.logprobs[0], atol=1e-6)


SHOTS = "Review: the film was warm and funny\nSentiment: positive\n\nReview: dull and slow story\nSentiment: negative\n\n"


def test_shared_prefix_matches_unshared(tokenizer, tiny_lm):
    """The shared few-shot prefix path gives the same scores with fewer forward tokens."""
    llama = tiny_lm(vocab_size=len(tokenizer))
    words = ["good", "bad", "fine", "boring story", "great music and actors", "weak plot", "moving"]
    examples = [TaskExample(SHOTS + f"Review: {w} {i}\nSentiment:", (" negative", " positive"), i % 2)
                for i, w in enumerate(words * 2)]
    multi = [TaskExample(SHOTS + f"Review: {w}\nSentiment:", (" not good at all", " quite good"), 1) for w in words]
    for exs in (examples, multi):
        enc = encode_task(exs, tokenizer, 512)
        shared = score_examples(llama, enc, batch_size=5, padding="left")
        plain = score_examples(llama, enc, batch_size=5, padding="right")
        for a, b in zip(shared.logprobs, plain.logprobs):
            np.testing.assert_allclose(a, b, atol=2e-5)
        assert shared.n_tokens < plain.n_tokens


def test_bad_plan_inputs_raise_sieve_error(gpt2_style_tokenizer: object, tiny_lm) -> None:
    encoded = encode_task([TaskExample("Q:", (" a", " b"), 0)], gpt2_style_tokenizer, 16)
    with pytest.raises(SieveError, match="out of range"):
        score_examples(tiny_lm("gpt2"), encoded, indices=[1])
    with pytest.raises(SieveError, match="batch_size"):
        score_examples(tiny_lm("gpt2"), encoded, batch_size=0)
