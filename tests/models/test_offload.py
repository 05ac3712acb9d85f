"""Streaming decoder blocks through two slots gives the model's own outputs, alone and under an
on-the-fly pruner (on the CPU here; the GPU run compares capped and uncapped memory on the device)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sieve.models.adapters import adapter_for, find_matrices
from sieve.models.offload import BlockStreamer, block_bytes, resident_blocks
from sieve.primitives.mask import row_prune_count
from sieve.prune.allocation import Allocation
from sieve.prune.pruner import ModelPruner
from sieve.scores import get_method


def _llama(layers: int = 4):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def test_streamed_blocks_give_the_same_logits_and_keep_their_host_copies():
    model = _llama()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    _, blocks = adapter_for(model).blocks(model)
    streamer = BlockStreamer(model, blocks, "cpu", resident=1)
    assert len(streamer.streamed) == 3 and streamer.bytes_streamed == 3 * block_bytes(blocks[1])
    host = [t.data_ptr() for t in streamer.streamed[0].tensors]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)
        assert torch.equal(model(input_ids=ids).logits, expected)  # slots are reused forward after forward
    assert [t.data_ptr() for t in streamer.streamed[0].tensors] == host  # back in host memory after each forward
    streamer.remove()


def test_an_on_the_fly_pruner_prunes_streamed_blocks_exactly_like_resident_ones():
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    outputs = []
    for stream in (False, True):
        model = _llama()
        mats = find_matrices(model)
        if stream:
            _, blocks = adapter_for(model).blocks(model)
            BlockStreamer(model, blocks, "cpu", resident=2)
        pruner = ModelPruner(mats, get_method("magnitude"), {}, mode="on_the_fly")
        pruner.precompute_levels({m.name: {row_prune_count(m.shape[1], 0.5)} for m in mats})
        pruner.apply(Allocation({m.name: 0.5 for m in mats}))
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
        pruner.release()
    assert torch.equal(outputs[0], outputs[1])


def test_resident_blocks_fill_the_budget():
    model = _llama(layers=6)
    _, blocks = adapter_for(model).blocks(model)
    per_block = block_bytes(blocks[0])
    tensors = [*model.parameters(), *model.buffers()]
    outside = sum(t.numel() * t.element_size() for t in tensors) - 6 * per_block
    assert resident_blocks(model, blocks, outside + 2 * per_block + 3 * per_block + 1) == 3
    assert resident_blocks(model, blocks, outside) == 0
    assert resident_blocks(model, blocks, 10**12) == 6
