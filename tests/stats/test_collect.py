import torch

from sieve.models.adapters import find_matrices
from sieve.stats import CalibrationStats, collect_stats


def test_streamed_batches_equal_one_batch_and_hessian_is_xtx(llama):
    mats = find_matrices(llama)
    ids = torch.randint(0, 200, (6, 12))
    one = collect_stats(llama, mats, [(ids, None)], source="general", hessian=True)
    streamed = collect_stats(llama, mats, [(ids[:2], None), (ids[2:5], None), (ids[5:], None)], source="general", hessian=True)
    for m in mats:
        assert one[m.name].n_tokens == streamed[m.name].n_tokens == 72
        assert torch.allclose(one[m.name].sq_sum, streamed[m.name].sq_sum, rtol=1e-9)
        assert torch.allclose(one[m.name].hessian, streamed[m.name].hessian, rtol=1e-4, atol=1e-4)
    # XᵀX by hand for the first matrix: capture its input directly.
    captured = []
    h = mats[0].module.register_forward_pre_hook(lambda mod, args: captured.append(args[0].reshape(-1, 32)))
    with torch.no_grad():
        llama(input_ids=ids)
    h.remove()
    x = captured[0].double()
    assert torch.allclose(one[mats[0].name].sq_sum, (x * x).sum(0), rtol=1e-9)
    assert torch.allclose(one[mats[0].name].hessian.double(), x.t() @ x, rtol=1e-4, atol=1e-3)


def test_padding_is_excluded(llama):
    mats = find_matrices(llama)
    a = torch.randint(1, 200, (1, 10))
    b = torch.randint(1, 200, (1, 6))
    unpadded = collect_stats(llama, mats, [(a, None), (b, None)], source="task")
    ids = torch.zeros(2, 10, dtype=torch.long)
    ids[0], ids[1, :6] = a[0], b[0]
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0], mask[1, :6] = 1, 1
    padded = collect_stats(llama, mats, [(ids, mask)], source="task")
    for m in mats:
        assert padded[m.name].n_tokens == 16
        assert torch.allclose(padded[m.name].sq_sum, unpadded[m.name].sq_sum, rtol=1e-5)


def test_save_load_roundtrip(llama, tmp_path):
    mats = find_matrices(llama)
    stats = collect_stats(llama, mats, [(torch.randint(0, 200, (2, 8)), None)], source="general", hessian=True, fingerprint="fp")
    loaded = CalibrationStats.load(stats.save(tmp_path / "general.safetensors"))
    assert loaded.source == "general" and loaded.fingerprint == "fp"
    for m in mats:
        assert torch.equal(loaded[m.name].sq_sum, stats[m.name].sq_sum)
        assert torch.equal(loaded[m.name].hessian, stats[m.name].hessian)
        assert loaded[m.name].n_tokens == 16


def test_block_by_block_equals_one_pass(llama, gpt2, gemma3):
    """Gemma 3 included: its full-attention layers get another mask and RoPE base than the sliding
    ones, so replaying the first block's inputs to every block would be wrong (30 tokens > window 24)."""
    from sieve.models.adapters import adapter_for
    from sieve.stats import collect_stats_sequential

    for model, length in ((llama, 9), (gpt2, 9), (gemma3, 30)):
        mats = find_matrices(model)
        _, blocks = adapter_for(model).blocks(model)
        ids = torch.randint(1, 200, (3, length))
        mask = torch.ones_like(ids)
        mask[2, 6:] = 0
        batches = [(ids[:2], mask[:2]), (ids[2:], mask[2:])]
        one = collect_stats(model, mats, batches, source="general", hessian=True)
        seq = collect_stats_sequential(model, blocks, mats, batches, source="general", hessian=True, device="cpu")
        for m in mats:
            assert one[m.name].n_tokens == seq[m.name].n_tokens == 2 * length + 6
            assert torch.allclose(one[m.name].sq_sum, seq[m.name].sq_sum, rtol=1e-5, atol=1e-8)
            assert torch.allclose(one[m.name].hessian, seq[m.name].hessian, rtol=1e-4, atol=1e-5)


def test_matrices_reading_one_input_share_statistics(llama, tmp_path):
    mats = find_matrices(llama)
    ids = torch.randint(0, 200, (2, 8))
    stats = collect_stats(llama, mats, [(ids, None), (ids.flip(0), None)], source="general", hessian=True)
    block0 = {m.kind: stats[m.name] for m in mats if m.block == 0}
    assert block0["self_attn.k_proj"] is block0["self_attn.q_proj"] is block0["self_attn.v_proj"]
    assert block0["mlp.up_proj"] is block0["mlp.gate_proj"]
    assert block0["self_attn.o_proj"] is not block0["self_attn.q_proj"]
    assert len({id(s.hessian) for s in stats.per_matrix.values()}) == 8  # 4 per block, not 7
    assert all(s.n_tokens == 32 for s in stats.per_matrix.values())
    loaded = CalibrationStats.load(stats.save(tmp_path / "s.safetensors"))
    for m in mats:
        assert torch.equal(loaded[m.name].hessian, stats[m.name].hessian)
    assert loaded[mats[1].name] is loaded[mats[0].name]
