"""Why compiled batch-1 decode of the random 8B Llama stays above its bytes' time: per-token
milliseconds of the static-cache step compiled three ways, and inductor's CUDA-graph skip reasons.
torch + transformers only (runs on the device without sieve's wheels).
    python3 benchmarks/device/decode_probe.py [layers]
"""

import json
import sys
import time

import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096)
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16).eval()
name = "cache" if "cache" in __import__("inspect").signature(model.forward).parameters else "past_key_values"
P, N = 16, 128


def step(model, cache, token, position, cache_position, mask):
    logits = model(input_ids=token, attention_mask=mask, position_ids=position, cache_position=cache_position,
                   use_cache=True, **{name: cache}).logits[:, -1]
    return logits.argmax(-1)


def step_nomask(model, cache, token, position, cache_position, mask):
    logits = model(input_ids=token, position_ids=position, cache_position=cache_position,
                   use_cache=True, **{name: cache}).logits[:, -1]
    return logits.argmax(-1)


def run(fn, label, host_positions=False):
    cache = StaticCache(config=cfg, max_cache_len=P + N)
    ids = torch.randint(0, 1000, (1, P), device="cuda")
    mask = torch.ones(1, P + N, dtype=torch.long, device="cuda")
    times = []
    for rep in range(4):
        with torch.inference_mode():
            cache.reset()
            out = model(input_ids=ids, attention_mask=mask, cache_position=torch.arange(P, device="cuda"),
                        use_cache=True, **{name: cache}).logits[:, -1].argmax(-1)
            tok = out[:, None].clone()
            pos = torch.full((1, 1), P, device="cuda")
            steps = torch.arange(P, P + N, device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(1, N):
                where = torch.tensor([P + i - 1], device="cuda") if host_positions else steps[i - 1:i]
                nxt = fn(model, cache, tok, pos, where, mask)
                tok = nxt[:, None].clone()
                pos = pos + 1
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / (N - 1) * 1e3)
    print(json.dumps({"label": label, "ms_per_token": [round(t, 3) for t in times],
                      "inductor": dict(counters["inductor"]), "stats": dict(counters["stats"])}), flush=True)


bytes_ms = sum(p.numel() * 2 for p in model.parameters()) / 4.8e12 * 1e3
print(json.dumps({"layers": layers, "bytes_ms_at_4.8TB/s": round(bytes_ms, 3), "torch": torch.__version__}), flush=True)
run(step, "eager")
torch._dynamo.reset()
counters.clear()
compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)
run(compiled, "reduce-overhead, mask, cache position built on the host each step", host_positions=True)
run(compiled, "reduce-overhead, mask")
torch._dynamo.reset()
counters.clear()
run(torch.compile(step_nomask, mode="reduce-overhead", fullgraph=True, dynamic=False), "reduce-overhead, no mask")
torch._dynamo.reset()
counters.clear()
run(torch.compile(step, mode="default", fullgraph=True, dynamic=False), "no cudagraphs")
