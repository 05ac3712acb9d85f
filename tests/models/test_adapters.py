import pytest
import torch

from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.matrix import select_matrices


def test_llama_matrices_found_from_module_tree(llama):
    mats = find_matrices(llama)
    kinds = [m.kind for m in mats if m.block == 0]
    assert kinds == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert len(mats) == 14
    assert all(m.name.startswith("model.layers.") for m in mats)
    assert "lm_head" not in {m.name for m in mats}
    assert mats[0].shape == (32, 32) and mats[-1].shape == (32, 64)


def test_gpt2_conv1d_viewed_as_out_by_in(gpt2):
    mats = find_matrices(gpt2)
    assert [m.kind for m in mats if m.block == 1] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    c_attn = mats[0]
    assert c_attn.transposed and c_attn.shape == (96, 32)
    x = torch.randn(3, 32)
    expected = c_attn.module(x)
    assert torch.allclose(x @ c_attn.weight.t() + c_attn.module.bias, expected, atol=1e-6)
    c_attn.weight[0, 0] = 0.0
    assert c_attn.module.weight[0, 0] == 0.0


def test_select_matrices_patterns(llama):
    mats = find_matrices(llama)
    assert len(select_matrices(mats, ["*mlp*"])) == 6
    assert len(select_matrices(mats, ["re:layers\\.1\\..*proj"])) == 7
    with pytest.raises(SieveError, match="'\\*nothing\\*'"):
        select_matrices(mats, ["*mlp*", "*nothing*"])


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_llama_family_layouts(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    mats = find_matrices(AutoModelForCausalLM.from_config(cfg))
    assert len(mats) == 14
    assert {m.kind for m in mats} == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
