import pytest
import torch

from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.primitives.mask import Pattern, mask_from_scores, row_prune_count
from sieve.prune.allocation import Allocation
from sieve.prune.pruner import ModelPruner, achieved_sparsity
from sieve.scores import get_method
from sieve.stats import MatrixStats, collect_stats


def _pruner(model, method="wanda", contiguous=False):
    mats = find_matrices(model)
    st = collect_stats(model, mats, [(torch.randint(0, 200, (2, 16)), None)], source="general")
    stats = {m.name: MatrixStats(general=st[m.name]) for m in mats}
    return mats, ModelPruner(mats, get_method(method), stats, contiguous=contiguous), stats


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


def test_factorised_matrices_apply_by_rank_and_restore_bit_identically(llama):
    from sieve.primitives.lowrank import LowRank, break_even_rank

    mats = find_matrices(llama)
    ids = torch.randint(0, 200, (3, 16))
    general = collect_stats(llama, mats, [(ids, None)], source="general", hessian=True)
    task = collect_stats(llama, mats, [(ids.flip(1), None)], source="task", hessian=True)
    stats = {m.name: MatrixStats(general=general[m.name], task=task[m.name]) for m in mats}
    pruner = ModelPruner(mats, get_method("wanda"), stats, LowRank())
    before = {m.name: m.weight.clone() for m in mats}
    ranks = {m.name: break_even_rank(*m.shape) // (2 + i % 3) for i, m in enumerate(mats[:5])}
    sparsity = {m.name: 0.5 for m in mats[5:9]}
    alloc = Allocation(sparsity, ranks=ranks)
    pruner.apply(alloc)
    for m in mats[:5]:
        f = pruner.factors_of(m.name)
        assert f.a.shape == (m.shape[0], break_even_rank(*m.shape))  # kept up to break-even, once
        assert torch.equal(m.weight, f.weight(ranks[m.name], m.weight.dtype))
        assert torch.linalg.matrix_rank(m.weight, rtol=1e-4) == ranks[m.name]
    for m in mats[5:9]:
        assert ((m.weight == 0).sum(1) == m.shape[1] // 2).all()
    for m in mats[9:]:
        assert torch.equal(m.weight, before[m.name])
    assert alloc.reduction(mats) == pytest.approx(
        sum(m.numel - r * sum(m.shape) for m, r in ((pruner.by_name[n], r) for n, r in ranks.items()))
        / sum(m.numel for m in mats))
    pruner.restore()
    assert all(torch.equal(m.weight, before[m.name]) for m in mats)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_on_the_fly_weights_equal_in_place_bit_for_bit(name, request):
    """The memory-saving mode computes each weight at every forward from the dense original; the
    weights, the logits and the restored model are exactly those of the in-place mode."""
    from sieve.primitives.lowrank import LowRank, break_even_rank

    model = request.getfixturevalue(name)
    mats = find_matrices(model)
    ids = torch.randint(0, 200, (2, 16))
    st = collect_stats(model, mats, [(ids, None)], source="general", hessian=True)
    stats = {m.name: MatrixStats(general=st[m.name]) for m in mats}
    dense_logits = model(input_ids=ids).logits
    allocations = [Allocation({m.name: (i % 4) / 5 for i, m in enumerate(mats)}),
                   Allocation({m.name: 0.5 for m in mats[1:]}, ranks={mats[0].name: break_even_rank(*mats[0].shape) // 3}),
                   Allocation({})]
    results = {}
    for mode in ("in_place", "on_the_fly"):
        pruner = ModelPruner(mats, get_method("wanda"), stats, LowRank(alpha=0.0), mode=mode)
        pruner.precompute_levels({m.name: {row_prune_count(m.shape[1], s) for s in (0.2, 0.4, 0.6)} for m in mats})
        seen = []
        for alloc in allocations:
            pruner.apply(alloc)
            with torch.no_grad():
                seen.append(([m.weight.clone() for m in mats], model(input_ids=ids).logits))
        pruner.release()
        results[mode] = seen
        assert all(isinstance(m.module.weight, torch.nn.Parameter) for m in mats)  # plain modules again
        assert torch.equal(model(input_ids=ids).logits, dense_logits)
    for (w_a, l_a), (w_b, l_b) in zip(results["in_place"], results["on_the_fly"]):
        assert all(torch.equal(a, b) for a, b in zip(w_a, w_b)) and torch.equal(l_a, l_b)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_graph_safe_on_the_fly_weights_equal_in_place_bit_for_bit(name, request):
    """A graph-safe pruner computes every live weight by the same kernel from its threshold buffers
    (refilled by apply and restore, keep-everything when dense): the weights, logits and restored model
    of the in-place mode, the kernels' inputs never moving; a level without a precomputed threshold
    (N:M) is refused before anything changes."""
    model = request.getfixturevalue(name)
    mats = find_matrices(model)
    ids = torch.randint(0, 200, (2, 16))
    dense_logits = model(input_ids=ids).logits
    levels = (0.2, 0.4, 0.6)
    allocations = [Allocation({m.name: levels[i % 3] for i, m in enumerate(mats)}),
                   Allocation({m.name: 0.4 for m in mats[1:]}), Allocation({m.name: levels[(i + 1) % 3]
                                                                           for i, m in enumerate(mats)})]
    results = {}
    for mode, graph_safe in (("in_place", False), ("on_the_fly", True)):
        pruner = ModelPruner(mats, get_method("magnitude"), {}, mode=mode, graph_safe=graph_safe)
        pruner.precompute_levels({m.name: {row_prune_count(m.shape[1], s) for s in levels} for m in mats})
        buffers = {n: tuple(t.data_ptr() for t in pair) for n, pair in pruner.live_thresholds.items()}
        seen = []
        for alloc in allocations:
            pruner.apply(alloc)
            with torch.no_grad():
                seen.append(([m.weight.clone() for m in mats], model(input_ids=ids).logits))
        if graph_safe:
            assert sorted(buffers) == sorted(m.name for m in mats)
            assert buffers == {n: tuple(t.data_ptr() for t in pair) for n, pair in pruner.live_thresholds.items()}
            before = {n: pair[0].clone() for n, pair in pruner.live_thresholds.items()}
            with pytest.raises(SieveError, match="graph-safe"):
                pruner.apply(Allocation({m.name: 0.5 for m in mats}, Pattern(2, 4)))
            assert all(torch.equal(pruner.live_thresholds[n][0], t) for n, t in before.items())
            pruner.restore()
            with torch.no_grad():
                assert torch.equal(model(input_ids=ids).logits, dense_logits)
        pruner.release()
        results[mode] = seen
        assert torch.equal(model(input_ids=ids).logits, dense_logits)
    for (w_a, l_a), (w_b, l_b) in zip(results["in_place"], results["on_the_fly"], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(w_a, w_b)) and torch.equal(l_a, l_b)
    with pytest.raises(ValueError, match="graph_safe"):
        ModelPruner(mats, get_method("magnitude"), {}, mode="in_place", graph_safe=True)


@pytest.mark.parametrize("contiguous", [False, True, "whole", "members"],
                         ids=["copied", "contiguous", "whole-stacks", "member-writes"])
@pytest.mark.parametrize("chunk_bytes", [1 << 28, 1])
def test_stacked_writes_equal_the_sort_path_for_partial_changes(llama, monkeypatch, chunk_bytes, contiguous):
    """Same-shaped matrices are masked a stack at a time (in chunks, members picked out of order);
    every weight is exactly the stable-sort mask of its level, and restore is bit-identical. With
    ``contiguous`` the model's weights are slices of one tensor per stack, written directly, and
    :meth:`release` gives each its own storage back (same parameter objects, same values)."""
    import numpy as np

    import sieve.prune.inplace as pruner_module

    monkeypatch.setattr(pruner_module, "_CHUNK_BYTES", chunk_bytes)
    params = {name: p for name, p in llama.named_parameters()}
    mats, pruner, stats = _pruner(llama, contiguous=bool(contiguous))
    if contiguous in ("whole", "members"):  # what CUDA does: a changed stack is rewritten whole, dense
        pruner.whole_stack_devices = {"cpu"}  # members included, or its few changed members one by one
    if contiguous == "members":
        monkeypatch.setattr(pruner_module, "_LAUNCH_BYTES", 1)
    assert len({id(s) for s in pruner.stacks.values()}) < len(mats)  # stacks formed
    storages = {m.name: m.weight.untyped_storage().data_ptr() for m in mats}
    assert (len(set(storages.values())) < len(mats)) == bool(contiguous)
    levels = (0.0, 0.25, 0.5, 0.75)
    pruner.precompute_levels({m.name: [row_prune_count(m.shape[1], s) for s in levels] for m in mats})
    before = {m.name: m.weight.clone() for m in mats}
    rng = np.random.default_rng(0)
    sparsity = {m.name: 0.5 for m in mats}
    member_writes = 0
    for step in range(6):
        for name in rng.choice([m.name for m in mats], size=len(mats) // 2, replace=False):
            sparsity[name] = float(rng.choice(levels))
        pruner.writes.clear()
        pruner.apply(Allocation(dict(sparsity)))
        if step == 0:  # every matrix changed: all written through stacks (directly when contiguous)
            assert pruner.writes == {"stacked": len(mats), "single": 0} | ({"direct": len(mats)} if contiguous else {})
        member_writes += pruner.writes["member"]
        for m in mats:
            dense = pruner.dense[m.name]
            ref = dense * mask_from_scores(get_method("wanda").scores(dense, stats[m.name]), sparsity[m.name])
            assert torch.equal(m.weight, ref), (step, m.name)
    assert (member_writes > 0) == (contiguous == "members")
    pruner.restore()
    assert all(torch.equal(m.weight, before[m.name]) for m in mats)
    pruner.release()
    assert all(torch.equal(m.weight, before[m.name]) for m in mats)
    assert len({m.weight.untyped_storage().data_ptr() for m in mats}) == len(mats)  # own storage each
    assert all(p is params[name] for name, p in llama.named_parameters())


def test_live_weight_read_outside_the_forward_is_computed_where_the_pruner_computes(llama):
    """A streamed block's dense weight sits in host memory between forwards; reading the pruned
    weight there (zero counts after a search) computes it on the pruner's device instead of mixing
    devices (``meta`` stands in for the GPU here)."""
    mats = find_matrices(llama)
    pruner = ModelPruner(mats, get_method("magnitude"), {}, mode="on_the_fly", device="meta")
    pruner.precompute_levels({m.name: [row_prune_count(m.shape[1], 0.5)] for m in mats})
    pruner.apply(Allocation.uniform(mats, 0.5))
    assert all(m.weight.device.type == "meta" and m.weight.shape == m.shape for m in mats)
    pruner.release()
    assert all(m.weight.device.type == "cpu" for m in mats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="whole-stack writes run on CUDA")
def test_cuda_whole_stacks_equal_copied_stacks_bit_for_bit(monkeypatch):
    """On CUDA a contiguous pruner rewrites changed stacks whole, or their few changed members one by
    one (forced here for every partial change); its weights equal those of the copied (chunked) path."""
    import copy

    import numpy as np

    import sieve.prune.inplace as pruner_module

    base = _cuda_llama()
    models = [base, copy.deepcopy(base), copy.deepcopy(base)]
    pruners, mats = [], []
    for model, contiguous in zip(models, (False, True, True), strict=True):
        ms = find_matrices(model)
        pruner = ModelPruner(ms, get_method("magnitude"), {}, contiguous=contiguous)
        pruner.precompute_levels({m.name: [row_prune_count(m.shape[1], s) for s in (0.25, 0.5, 0.75)] for m in ms})
        pruners.append(pruner)
        mats.append(ms)
    rng = np.random.default_rng(0)
    sparsity = {m.name: 0.5 for m in mats[0]}
    for step in range(5):
        for name in rng.choice(list(sparsity), size=len(sparsity) // 3, replace=False):
            sparsity[name] = float(rng.choice((0.0, 0.25, 0.5, 0.75)))
        for i, pruner in enumerate(pruners):
            monkeypatch.setattr(pruner_module, "_LAUNCH_BYTES", 1 if i == 2 else 1 << 26)
            pruner.apply(Allocation(dict(sparsity)))
        for a, b, c in zip(*mats, strict=True):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight), (step, a.name)
    assert pruners[1].writes["direct"] > 0 and pruners[0].writes["direct"] == 0
    assert pruners[2].writes["member"] > 0 and pruners[1].writes["member"] == 0


def _cuda_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
