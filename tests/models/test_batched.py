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
