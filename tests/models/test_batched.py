"""Linears holding several candidates' weights (``sieve.models.batched``); the model-level check — a
plan of copies scoring each candidate — is ``tests/metrics/test_scorer.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sieve.models.adapters import find_matrices
from sieve.models.batched import CandidateCount, CandidateLinear, CandidateModel, unsupported


def test_candidate_linear_multiplies_each_block_of_rows_by_its_own_weights() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(8, 5)
    weights = torch.randn(4, 5, 8)
    count = CandidateCount(3)
    layer = CandidateLinear(linear, weights, count)
    x = torch.randn(3 * 2, 7, 8)  # 3 candidates × 2 rows, candidate-major
    y = layer(x)
    for c in range(3):
        want = nn.functional.linear(x[2 * c:2 * c + 2], weights[c], linear.bias)
        torch.testing.assert_close(y[2 * c:2 * c + 2], want)
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert [name for name, _ in layer.named_buffers()] == ["weights"]


def test_only_plain_linears_hold_candidates(llama, gpt2) -> None:
    assert unsupported(find_matrices(llama)) is None
    assert "Conv1D" in unsupported(find_matrices(gpt2))
    with pytest.raises(ValueError, match="Conv1D"):
        CandidateModel(gpt2, find_matrices(gpt2), {})


@pytest.mark.parametrize("tied", [False, True])
def test_a_swapped_model_counts_the_parameters_of_one_candidate(tied: bool) -> None:
    """The plan's cost model sizes a model by its parameters; a swapped model keeps its ``K`` weight
    sets in buffers and its head as a view of the (tied) embedding: still one candidate's count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sieve.models.batched import parameter_count

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))
    dense = sum(p.numel() for p in model.parameters())
    matrices = find_matrices(model)
    swapped = CandidateModel(model, matrices, {m.name: m.weight.detach().expand(3, -1, -1).clone() for m in matrices})
    assert sum(p.numel() for p in model.parameters()) < dense == parameter_count(model)
    swapped.restore()
    assert parameter_count(model) == dense
