"""The shared few-shot prefix path gives the same scores with fewer forward tokens."""

import numpy as np

from sieve.data.splits import TaskExample
from sieve.metrics.loglik import encode_task, score_examples

SHOTS = "Review: the film was warm and funny\nSentiment: positive\n\nReview: dull and slow story\nSentiment: negative\n\n"


def test_shared_prefix_matches_unshared(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
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
