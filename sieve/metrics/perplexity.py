"""Perplexity of a causal LM on fixed token blocks (the general-ability check).

``PPL = exp(sum NLL / count)`` over every next-token prediction of every block: a block of
``L`` tokens gives ``L - 1`` predictions (position ``t`` predicts token ``t + 1``), log-softmax
in float32, sums in float64. Blocks are full (no padding), so no mask is needed.
"""

from __future__ import annotations

import math

import torch

from sieve.errors import SieveError
from sieve.models.forward import evaluating


def perplexity(
    model: torch.nn.Module,
    token_blocks: torch.Tensor,
    batch_size: int = 4,
    *,
    device: torch.device | str | None = None,
) -> float:
    """``exp`` of the mean next-token NLL of ``model`` over ``token_blocks`` (``(n, L)`` long)."""
    if token_blocks.ndim != 2 or token_blocks.shape[1] < 2 or token_blocks.shape[0] < 1:
        raise SieveError(f"token_blocks must be (n >= 1, L >= 2), got {tuple(token_blocks.shape)}")
    if batch_size < 1:
        raise SieveError(f"batch_size must be at least 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model), torch.inference_mode():
        for start in range(0, token_blocks.shape[0], batch_size):
            ids = token_blocks[start:start + batch_size].to(device=device, dtype=torch.long)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="none",
            )
            total += float(nll.double().sum())
            count += nll.numel()
    return math.exp(total / count)
