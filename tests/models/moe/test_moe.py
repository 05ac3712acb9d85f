"""Mixture-of-Experts (Mixtral, Qwen2-MoE, Qwen3-MoE): every expert's slices are matrices, routers
never are, statistics see only the tokens routed to each expert, and a search gives experts their
own levels."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.adapters.base import check_coverage
from sieve.models.adapters.decoder import DecoderStack
from sieve.stats import collect_stats

FAMILIES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
}


def tiny_moe(family: str, vocab: int = 64, seed: int = 0):
    cfg = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, **FAMILIES[family])
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_experts_are_matrices_and_routers_are_not(family):
    model = tiny_moe(family)
    mats = find_matrices(model)
    names = {m.name for m in mats}
    experts = [m for m in mats if m.expert is not None]
    assert len(experts) == 2 * 4 * 2  # blocks × experts × (gate_up, down)
    for m in experts:
        stored = getattr(m.module, m.param)
        assert m.shape == tuple(stored.shape[1:]) and m.weight.data_ptr() == stored[m.expert].data_ptr()
    assert not any(n.endswith((".gate", "shared_expert_gate")) for n in names)
    assert ("shared_expert" in " ".join(names)) == (family == "qwen2_moe")
    expert = experts[5]
    expert.weight.zero_()  # a write through the matrix view reaches exactly that expert's slice
    assert getattr(expert.module, expert.param)[expert.expert].abs().sum() == 0
    assert getattr(expert.module, expert.param)[(expert.expert + 1) % 4].abs().sum() > 0


def test_an_adapter_that_would_skip_the_experts_is_an_error():
    model = tiny_moe("mixtral")
    adapter = DecoderStack()
    with pytest.raises(SieveError, match=r"does not understand model\.layers\.\d+\.mlp\.experts\.(gate_up|down)_proj"):
        check_coverage(adapter, model, adapter.matrices(model))


def test_statistics_see_only_the_tokens_routed_to_each_expert():
    model = tiny_moe("qwen3_moe")
    mats = find_matrices(model)
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    stats = collect_stats(model, mats, [(ids, mask)], source="task", hessian=True)
    routed = {}
    for block in range(2):
        moe = model.model.layers[block].mlp
        hidden = []
        handle = moe.register_forward_pre_hook(lambda mod, args: hidden.append(args[0].reshape(-1, 32)))
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        handle.remove()
        _, _, chosen = moe.gate(hidden[0])
        valid = mask.reshape(-1).bool()
        for e in range(4):
            rows = (chosen == e).any(-1) & valid
            routed[(block, e)] = hidden[0][rows]
    for m in mats:
        if m.expert is None or m.param != "gate_up_proj":
            continue
        x = routed[(m.block, m.expert)].double()
        assert stats[m.name].n_tokens == x.shape[0]
        assert torch.allclose(stats[m.name].sq_sum, x.pow(2).sum(0), rtol=1e-6, atol=1e-9)
    assert sum(stats[m.name].n_tokens for m in mats if m.expert is not None and m.param == "down_proj") == 2 * 2 * 26
    assert not hasattr(model.model.layers[0].mlp.experts, "forward") or "forward" not in vars(model.model.layers[0].mlp.experts)


def test_a_per_expert_search_gives_experts_their_own_levels(search_config, run_search, tokenizer, tmp_path):
    from sieve.report import write_report

    folder = tmp_path / "moe"
    tiny_moe("mixtral", vocab=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run = tmp_path / "run"
    out = run_search(search_config(model=str(folder), space="per_expert", generations=2), run, report=True)
    body = json.loads((run / "best_allocation.json").read_text())
    experts = {n: s for n, s in body["modules"].items() if ".experts." in n}
    assert len(experts) == 16 and not any(n.endswith(".gate") for n in body["modules"])
    for block in range(2):
        for e in range(4):  # one gene per expert: its two slices share a level
            gate_up = body["modules"][f"model.layers.{block}.mlp.experts.{e}.gate_up_proj"]
            down = body["modules"][f"model.layers.{block}.mlp.experts.{e}.down_proj"]
            assert abs(gate_up - down) < 0.05
    assert len({round(s, 3) for s in experts.values()}) > 1  # experts differ
    assert out["achieved_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert "unrouted_experts" in out
    written = write_report(run)
    assert "mlp.experts.3.down_proj" in written["markdown"].read_text() or written["allocation"].stat().st_size > 10_000
