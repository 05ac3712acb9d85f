"""The compiled (static cache + torch.compile) greedy path gives exactly the eager path's tokens, for a
dense model, a depth-pruned one and a factorised one; the timers return real throughputs.

On the CPU the compiled path runs with ``backend="aot_eager"``: dynamo traces the decode step over the
static cache exactly as on the GPU (the same graph inductor would compile), without inductor's
C++ build (~35 s per tiny model on two cores).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM

from sieve.evaluate.generation import (
    CompileSettings,
    decode_tokens_per_second,
    greedy_generate,
    prefill_tokens_per_second,
)
from sieve.models.depth import remove_blocks
from sieve.models.factorized import FactorizedLinear, factorise

CPU_COMPILE = CompileSettings(backend="aot_eager")
NEW = 8
EOS = 2  # LlamaConfig's default eos_token_id


def tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def dense() -> LlamaForCausalLM:
    return tiny()


@functools.cache  # shared with the timer test, which then reuses its compiled graph (same shapes)
def depth() -> LlamaForCausalLM:
    model = tiny()
    remove_blocks(model, [0])
    assert len(model.model.layers) == 1 and model.model.layers[0].self_attn.layer_idx == 0
    return model


def factorised() -> LlamaForCausalLM:
    model = tiny()
    g = torch.Generator().manual_seed(1)
    factorise(model, {"model.layers.1.mlp.up_proj": (torch.randn(64, 8, generator=g) * 0.1,
                                                     torch.randn(8, 32, generator=g) * 0.1),
                      "model.layers.0.self_attn.q_proj": (torch.randn(32, 4, generator=g) * 0.1,
                                                          torch.randn(4, 32, generator=g) * 0.1)})
    assert isinstance(model.model.layers[1].mlp.up_proj, FactorizedLinear)
    return model


def prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 6 tokens, the second left-padded by 2 (pad id 0, masked)."""
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    return ids, mask


def reference_greedy(model, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    """Argmax of full no-cache forwards, one token at a time, end-of-sequence masked (what
    ``min_new_tokens = new`` does), positions counted over the real tokens only."""
    out = []
    with torch.no_grad():
        for _ in range(new):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
            logits[:, EOS] = -math.inf
            token = logits.argmax(-1, keepdim=True)
            out.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return torch.cat(out, 1)


@pytest.mark.parametrize(("build", "driver"), [(dense, "loop"), (dense, "generate"), (factorised, "loop"),
                                               (depth, "loop")])  # depth last: see the timer test
def test_compiled_greedy_equals_eager_greedy(build, driver):
    model = build()
    ids, mask = prompt()
    eager = greedy_generate(model, ids, NEW, compiled=False, attention_mask=mask)
    graphs = counters["stats"]["unique_graphs"]
    settings = CPU_COMPILE.model_copy(update={"driver": driver})
    compiled = greedy_generate(model, ids, NEW, compiled=True, attention_mask=mask, settings=settings)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # the decode step really went through dynamo, as one graph
    assert eager.shape == compiled.shape == (2, NEW)
    assert torch.equal(compiled, eager)
    assert not (eager == EOS).any()  # generation ran to the full length
    again = greedy_generate(model, ids, NEW, compiled=True, attention_mask=mask, settings=settings)
    assert torch.equal(again, eager) and counters["stats"]["unique_graphs"] == graphs + 1  # reused, not recompiled


def test_eager_greedy_is_the_argmax_of_full_forwards():
    model = dense()
    ids, mask = prompt()
    expected = reference_greedy(model, ids, mask, NEW)
    assert torch.equal(greedy_generate(model, ids, NEW, compiled=False, attention_mask=mask), expected)
    pruned = depth()
    assert not torch.equal(greedy_generate(pruned, ids, NEW, compiled=False, attention_mask=mask), expected)


def test_compile_settings_follow_the_device():
    cuda = CompileSettings().compile_config(torch.device("cuda"))
    cpu = CompileSettings().compile_config(torch.device("cpu"))
    assert (cuda.mode, cuda.backend, cuda.fullgraph, cuda.dynamic) == ("reduce-overhead", "inductor", True, False)
    assert not cuda._compile_all_devices
    assert cpu.mode == "default" and cpu._compile_all_devices is True
    traced = CPU_COMPILE.compile_config(torch.device("cpu"))
    assert traced.mode is None and traced.backend == "aot_eager"


def test_timers_return_positive_finite_throughputs():
    model = depth()  # the prompt's shapes: the compiled step from the last equality test is reused (seconds saved)
    ids, _ = prompt()
    batch, prompt_len = ids.shape
    figures = [decode_tokens_per_second(model, batch, prompt_len, NEW, compiled=True, settings=CPU_COMPILE, repeats=1),
               decode_tokens_per_second(model, batch, prompt_len, NEW, compiled=False, repeats=1),
               prefill_tokens_per_second(model, 2, 8, repeats=1)]
    assert all(math.isfinite(f) and f > 0 for f in figures), figures
