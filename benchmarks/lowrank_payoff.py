"""What a low-rank allocation buys when deployed: size and speed of the factorised model vs dense.

    python benchmarks/lowrank_payoff.py --allocation RUN_OR_ALLOCATION [--llama-8b [--rank-multiple 64]] [--smoke]

For the allocation's own model (realised with its recorded factors, exported as
:class:`~sieve.models.factorized.FactorizedLinear` modules) and, with ``--llama-8b``, for a
random-weight ~8B Llama given *the same rank profile* (every matrix keeps the same fraction of its
break-even rank as the matrix of the same kind at the same relative depth; factors random — this
row measures size and speed only), against the dense model: parameter count, checkpoint bytes
(safetensors on disk for the allocation's model; tensor bytes for the 8B), peak GPU memory of a
prefill, prefill tokens/s (batch 64 × 512) and decode tokens/s (batch 1 and 32, greedy, 128 new
tokens after a 16-token prompt), all in bf16 on one GPU. ``--rank-multiple N`` adds an 8B row with
the same profile's ranks rounded down to multiples of ``N`` (GEMM shapes tensor cores like).
``--smoke`` runs a tiny model on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, forward_timer, provenance, sync, write_result  # noqa: E402

from sieve.models.factorized import factorise  # noqa: E402
from sieve.primitives.lowrank import break_even_rank  # noqa: E402

log = logging.getLogger("benchmarks.lowrank_payoff")

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256)


def measure(model, device: torch.device, prefill: tuple[int, int], decode_batches: tuple[int, ...], new_tokens: int,
            folder: Path | None) -> dict[str, Any]:
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {"parameters": params,
                           "tensor_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values())}
    if folder is not None:
        model.save_pretrained(folder)
        row["checkpoint_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, prefill, generator=gen).to(device)

    forward = forward_timer(model, ids, device)
    forward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row["prefill_tokens_per_s"] = ids.numel() / statistics.median(forward() for _ in range(3))
    row["prefill_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    for batch in decode_batches:
        prompt = torch.randint(0, vocab, (batch, 16), generator=gen).to(device)
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        with torch.inference_mode():
            model.generate(prompt, **kwargs)  # warm-up
            sync(device)
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            sync(device)
        row[f"decode_b{batch}_tokens_per_s"] = batch * new_tokens / (time.perf_counter() - start)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}


def allocation_model(target: str, device: torch.device) -> tuple[Any, Any, dict[str, int]]:
    """The allocation's own model, dense, and its factorised twin (realised with the recorded factors)."""
    from sieve.evaluate.target import open_target, open_workspace_for, realise_target
    from sieve.models.loading import load_model

    opened = open_target(target)
    ws = open_workspace_for(opened, device=str(device))
    pruned = realise_target(opened, ws)
    ranks = dict(opened.file.module_ranks)
    factors = {name: (f.a.to(ws.model.dtype), f.b.to(ws.model.dtype)) for name, f in
               ((n, pruned.pruner.factors_of(n).truncated(r)) for n, r in ranks.items())}
    factorise(ws.model, factors)
    dense = load_model(opened.file.model, dtype=ws.dtype, device=str(device)).model
    return dense, ws.model, ranks


def rank_profile(ranks: dict[str, int], shapes: dict[str, tuple[int, int]]) -> dict[tuple[float, str], float]:
    """``(relative depth, kind) → rank / break-even rank`` of an allocation."""
    import re

    blocks = sorted({int(re.search(r"\.(\d+)\.", n).group(1)) for n in shapes})
    profile = {}
    for name, (rows, cols) in shapes.items():
        block = int(re.search(r"\.(\d+)\.", name).group(1))
        kind = name.split(f".{block}.", 1)[1]
        fraction = ranks[name] / break_even_rank(rows, cols) if name in ranks else 1.0
        profile[(blocks.index(block) / max(len(blocks) - 1, 1), kind)] = fraction
    return profile


def llama_with_profile(config: dict[str, Any], profile: dict[tuple[float, str], float], device: torch.device,
                       seed: int = 0, multiple: int = 1):
    """A random Llama, dense and factorised with ``profile`` applied at the nearest relative depth
    (ranks rounded down to multiples of ``multiple``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sieve.models.adapters import find_matrices

    torch.manual_seed(seed)
    with torch.device(device):
        dense = LlamaForCausalLM(LlamaConfig(**config, max_position_embeddings=4096)).to(torch.bfloat16).eval()
    mats = find_matrices(dense)
    depths = sorted({d for d, _ in profile})
    n_blocks = max(m.block for m in mats) + 1
    factors, ranks = {}, {}
    for index, m in enumerate(mats):
        depth = min(depths, key=lambda d: abs(d - m.block / max(n_blocks - 1, 1)))
        fraction = profile.get((depth, m.kind), 1.0)
        rows, cols = m.shape
        rank = int(fraction * break_even_rank(rows, cols)) // multiple * multiple
        if rank < break_even_rank(rows, cols):
            g = torch.Generator(device=device).manual_seed(seed * 100_000 + index)
            factors[m.name] = (torch.randn(rows, rank, device=device, generator=g, dtype=torch.bfloat16) * 0.02,
                               torch.randn(rank, cols, device=device, generator=g, dtype=torch.bfloat16) * 0.02)
            ranks[m.name] = rank
    return dense, factors, ranks


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allocation", required=True, help="a low-rank or mixed run directory or allocation file")
    p.add_argument("--llama-8b", action="store_true")
    p.add_argument("--rank-multiple", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="lowrank")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    device = bench_device(args.smoke)
    prefill, batches, new = ((2, 16), (1, 2), 4) if args.smoke else ((64, 512), (1, 32), 128)
    body: dict[str, Any] = {**provenance(), "allocation": args.allocation, "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="sieve-payoff-"))

    dense, small, ranks = allocation_model(args.allocation, device)
    from sieve.models.adapters import find_matrices

    shapes = {m.name: m.shape for m in find_matrices(dense)}
    for label, model in (("dense", dense), ("lowrank", small)):
        row = {"model": Path(str(dense.config._name_or_path)).name or "allocation model", "variant": label,
               **measure(model, device, prefill, batches, new, tmp / label)}
        body["rows"].append(row)
        log.warning("%s", row)
        write_result("payoff", body, args.out_dir, args.tag)
    del dense, small
    if args.llama_8b or args.smoke:
        config = LLAMA_8B if not args.smoke else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
        name = "llama-8b (random)" if not args.smoke else "llama-tiny (random)"
        multiples = sorted({1, args.rank_multiple})
        for multiple in multiples:
            dense, factors, big_ranks = llama_with_profile(config, rank_profile(ranks, shapes), device, multiple=multiple)
            body.setdefault("llama_ranks", {})[str(multiple)] = len(big_ranks)
            if multiple == 1:
                row = {"model": name, "variant": "dense", **measure(dense, device, prefill, batches, new, None)}
                body["rows"].append(row)
                log.warning("%s", row)
            factorise(dense, factors)
            variant = "lowrank" if multiple == 1 else f"lowrank-x{multiple}"
            row = {"model": name, "variant": variant, **measure(dense, device, prefill, batches, new, None)}
            body["rows"].append(row)
            log.warning("%s", row)
            write_result("payoff", body, args.out_dir, args.tag)
            del dense, factors
    path = write_result("payoff", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
