import pytest
import torch

from sieve.models.adapters import find_matrices
from sieve.primitives.mask import Pattern, mask_from_scores, row_prune_count
from sieve.prune.allocation import Allocation
from sieve.prune.pruner import ModelPruner, achieved_sparsity
from sieve.scores import get_method
from sieve.stats import MatrixStats, collect_stats


def _pruner(model, method="wanda"):
    mats = find_matrices(model)
    st = collect_stats(model, mats, [(torch.randint(0, 200, (2, 16)), None)], source="general")
    stats = {m.name: MatrixStats(general=st[m.name]) for m in mats}
    return mats, ModelPruner(mats, get_method(method), stats), stats


def test_apply_restore_bit_identical_and_exact(llama, gpt2):
    for model in (llama, gpt2):
        mats, pruner, _ = _pruner(model)
        before = {m.name: m.weight.clone() for m in mats}
        alloc = Allocation({m.name: (i % 5) / 6 for i, m in enumerate(mats)})
        pruner.apply(alloc)
        for m in mats:
            zeros = (m.weight == 0).sum(1)
            assert (zeros == row_prune_count(m.shape[1], alloc.sparsity[m.name])).all()
        pruner.restore()
        for m in mats:
            assert torch.equal(m.weight, before[m.name])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_threshold_path_equals_sort_path(arch, request):
    mats, pruner, stats = _pruner(request.getfixturevalue(arch))
    alloc = Allocation.uniform(mats, 0.4)
    pruner.apply(alloc)
    slow = {m.name: m.weight.clone() for m in mats}
    pruner.restore()
    pruner.precompute_levels({m.name: [row_prune_count(m.shape[1], 0.4)] for m in mats})
    pruner.apply(alloc)
    for m in mats:
        assert torch.equal(m.weight, slow[m.name])
        ref = pruner.dense[m.name] * mask_from_scores(get_method("wanda").scores(pruner.dense[m.name], stats[m.name]), 0.4)
        assert torch.equal(m.weight, ref)


def test_nm_and_achieved_sparsity(llama):
    mats, pruner, _ = _pruner(llama, "magnitude")
    pruner.apply(Allocation.uniform(mats, 0.5, Pattern.parse("2:4")))
    assert achieved_sparsity(mats) == 0.5
    for m in mats:
        assert ((m.weight.view(m.shape[0], -1, 4) == 0).sum(-1) == 2).all()


def test_threshold_path_exact_with_tied_scores(llama):
    """Quantised weights (like the Q4_1 SmolLM2) tie often; ties are broken by column, exactly."""
    mats = find_matrices(llama)
    with torch.no_grad():
        for m in mats:
            m.weight.copy_((m.weight * 8).round() / 8)
    pruner = ModelPruner(mats, get_method("magnitude"), {})
    levels = (0.3, 0.5, 0.9)
    pruner.precompute_levels({m.name: [row_prune_count(m.shape[1], s) for s in levels] for m in mats})
    for s in levels:
        pruner.apply(Allocation.uniform(mats, s))
        for m in mats:
            ref = pruner.dense[m.name] * mask_from_scores(pruner.dense[m.name].abs(), s)
            assert torch.equal(m.weight, ref)
            assert ((m.weight == 0).sum(1) >= row_prune_count(m.shape[1], s)).all()
