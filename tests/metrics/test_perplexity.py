"""Perplexity equals the model's own loss on equal-length blocks, whatever the batch size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sieve.errors import SieveError
from sieve.metrics.perplexity import perplexity

VOCAB = 300


def test_perplexity_matches_model_loss() -> None:
    torch.manual_seed(2)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=512)).eval()
    blocks = torch.randint(0, VOCAB, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        losses = [float(model(blocks[i:i + 1], labels=blocks[i:i + 1]).loss) for i in range(5)]
    want = math.exp(np.mean(losses))  # equal-length blocks: mean of means = global mean
    assert perplexity(model, blocks, batch_size=2) == pytest.approx(want, rel=1e-5)
    assert perplexity(model, blocks, batch_size=5) == pytest.approx(want, rel=1e-5)
    with pytest.raises(SieveError, match="token_blocks"):
        perplexity(model, blocks[:, :1])
