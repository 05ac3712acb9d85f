"""What a pruned export buys when deployed: size, memory and speed of each variant vs dense, eager and compiled.

    python benchmarks/deploy.py --variant dense=PATH --variant depth=PATH --variant lowrank=PATH ...
        [--llama-8b [--depth-fraction 0.25]] [--new-tokens 128] [--smoke] [--out-dir DIR]

Each ``--variant NAME=PATH`` is a model folder — a plain transformers folder (``sieve export --to hf``
of a dense or depth-pruned model) or a factorised export (``config.json`` with ``sieve_lowrank``) —
loaded with :func:`sieve.load_pretrained`. The variant named ``dense`` is the reference. For each,
on one device in bf16 (float32 on the CPU): parameters, tensor bytes (unique parameter and buffer
storage), checkpoint bytes (the folder's ``*.safetensors``), peak GPU memory of a prefill (null on
the CPU), prefill tokens/s (one forward, batch 64 × 512) and greedy decode tokens/s at batch 1 and
32 (``--new-tokens`` after a 16-token prompt), each both eager (dynamic cache) and compiled (static
cache, decode step through ``torch.compile``, CUDA graphs on the GPU) — the same two code paths for
every model (:mod:`sieve.evaluate.generation`). Every figure is also given as a ratio to the dense
model's figure measured in the same run (``vs_dense``). A model's eager figures are all taken before
its first compilation, and compiled state (graphs, CUDA-graph pools, inductor's worker processes)
is dropped between models, so no model is timed beside another one's leftovers.

Why compiled as well as eager: eager batch-1 decode of an 8B model is launch-bound (about a tenth of
what its bytes allow), so removing parameters barely moves it; a server decodes compiled, where time
per token follows the bytes read, and that is where a smaller model pays.

``--llama-8b`` adds a random-weight ~8B Llama (built on the GPU directly in bf16) against itself
with ``n = round(depth_fraction · 32)`` decoder blocks removed by
:func:`sieve.models.depth.remove_blocks` — speed and size only. Which blocks does not matter for
speed (all blocks have the same shape); the ``n`` blocks just before the final one are removed
(``32−1−n … 30``; the final block is kept, as depth-pruning methods keep it). Its tensor bytes stand
for the checkpoint (it is not written to disk).

``--smoke`` builds a tiny random Llama folder, a copy with one block removed and a factorised copy,
and runs them on the CPU in seconds (compiled with ``aot_eager``: inductor's C++ build alone would
take minutes there).
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, provenance, write_result  # noqa: E402

import sieve  # noqa: E402
from sieve.evaluate.generation import (  # noqa: E402
    CompileSettings,
    decode_tokens_per_second,
    prefill_tokens_per_second,
    reset_compiled,
)
from sieve.models.depth import remove_blocks  # noqa: E402

log = logging.getLogger("benchmarks.deploy")

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096)
SMOKE_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
#: fields that are not figures (no ratio to dense)
LABELS = ("model", "variant", "path")


def parse_variant(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def free(device: torch.device) -> None:
    """Drop compiled graphs (and their CUDA-graph pools), collect, and give cached blocks back."""
    reset_compiled()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the unique tensors (tied weights once): what a safetensors file of the model holds."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def measure(model: torch.nn.Module, device: torch.device, settings: dict[str, Any], compile_settings: CompileSettings,
            folder: Path | None) -> dict[str, Any]:
    """One row of figures for ``model`` (already on ``device``)."""
    row: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()), "tensor_bytes": tensor_bytes(model),
                           "checkpoint_bytes": (sum(f.stat().st_size for f in folder.glob("*.safetensors"))
                                                if folder is not None else None)}
    batch, seq = settings["prefill"]
    repeats = settings["repeats"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    row["prefill_tokens_per_s"] = prefill_tokens_per_second(model, batch, seq, repeats=repeats)
    row["prefill_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # every eager figure before the first compilation of this model (see reset_compiled)
    for b in settings["decode_batches"]:
        row[f"decode_b{b}_eager_tokens_per_s"] = decode_tokens_per_second(
            model, b, settings["prompt_len"], settings["new_tokens"], False, repeats=repeats)
    for driver in settings["compiled_drivers"]:
        driven = compile_settings.model_copy(update={"driver": driver})
        for b in settings["decode_batches"]:
            row[decode_key(b, driver)] = decode_tokens_per_second(model, b, settings["prompt_len"], settings["new_tokens"],
                                                                  True, repeats=repeats, settings=driven)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def decode_key(batch: int, driver: str) -> str:
    """``decode_b{batch}_compiled_tokens_per_s`` for sieve's static-cache loop (the compiled figure of
    every comparison), ``..._compiled_generate_...`` for transformers' compiled ``generate``."""
    return f"decode_b{batch}_compiled{'' if driver == 'loop' else '_' + driver}_tokens_per_s"


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``vs_dense``: every figure divided by the same figure of its model's dense row
    (null where either is null or dense is 0, or no dense row has been measured yet), to four
    significant digits (a fixed number of decimals would lose most of a small ratio's precision)."""
    dense = {r["model"]: r for r in rows if r["variant"] == "dense"}
    out = []
    for row in rows:
        ref = dense.get(row["model"])
        ratios = None
        if ref is not None:
            ratios = {k: (float(f"{v / ref[k]:.4g}") if v is not None and ref.get(k) else None)
                      for k, v in row.items() if k not in LABELS and k != "vs_dense"}
        out.append({**{k: v for k, v in row.items() if k != "vs_dense"}, "vs_dense": ratios})
    return out


def table_line(row: dict[str, Any], batches: tuple[int, ...]) -> str:
    ratio = row["vs_dense"] or {}

    def cell(key: str, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
        value = row.get(key)
        if value is None:
            return "-"
        text = fmt.format(value / scale)
        return f"{text} ({ratio[key]:.2f}x)" if ratio.get(key) is not None and row["variant"] != "dense" else text

    decode = "  ".join(f"b{b} eager {cell(f'decode_b{b}_eager_tokens_per_s')} compiled "
                       f"{cell(decode_key(b, 'loop'))}"
                       + (f" (generate {cell(decode_key(b, 'generate'))})" if decode_key(b, "generate") in row else "")
                       for b in batches)
    return (f"{row['model']:<20} {row['variant']:<10} params {cell('parameters', 1e6, '{:.2f}M')}  "
            f"ckpt {cell('checkpoint_bytes', 2**30, '{:.2f}G')}  peak {cell('prefill_peak_gib', 1, '{:.2f}G')}  "
            f"prefill {cell('prefill_tokens_per_s')} tok/s  decode tok/s: {decode}")


def smoke_folders(root: Path) -> list[tuple[str, Path]]:
    """A tiny random Llama saved as a folder, a copy without block 1, and a factorised copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sieve.models.factorized import factorise

    def build() -> LlamaForCausalLM:
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**SMOKE_LLAMA)).eval()

    folders = [("dense", root / "dense"), ("depth", root / "depth"), ("lowrank", root / "lowrank")]
    build().save_pretrained(folders[0][1])
    model = build()
    remove_blocks(model, [1])
    model.save_pretrained(folders[1][1])
    model = build()
    g = torch.Generator().manual_seed(1)
    h, i = SMOKE_LLAMA["hidden_size"], SMOKE_LLAMA["intermediate_size"]
    factorise(model, {f"model.layers.{b}.mlp.{n}": (torch.randn(o, 8, generator=g) * 0.1, torch.randn(8, k, generator=g) * 0.1)
                      for b in range(SMOKE_LLAMA["num_hidden_layers"]) for n, o, k in (("up_proj", i, h), ("down_proj", h, i))})
    model.save_pretrained(folders[2][1])
    return folders


def removed_blocks(count: int, fraction: float) -> list[int]:
    """The ``round(fraction · count)`` blocks just before the final one (speed does not depend on which)."""
    n = round(fraction * count)
    if not 0 < n < count:
        raise SystemExit(f"--depth-fraction {fraction} removes {n} of {count} blocks; need at least 1 and fewer than all")
    return list(range(count - 1 - n, count - 1))


def random_llama(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random Llama built on ``device`` directly in ``dtype`` (no float32 copy, no host copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM._from_config(LlamaConfig(**config), dtype=dtype).eval()


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=PATH",
                   help="a model folder to measure; the one named 'dense' is the reference")
    p.add_argument("--llama-8b", action="store_true", help="also a random ~8B Llama vs itself with blocks removed")
    p.add_argument("--depth-fraction", type=float, default=0.25)
    p.add_argument("--new-tokens", type=int, default=None, help="decode length (default 128; 4 with --smoke)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; aot_eager with --smoke)")
    p.add_argument("--compiled-drivers", default="loop",
                   help="compiled decode drivers, comma-separated: loop (sieve's static-cache loop, the compared "
                        "figure) and/or generate (transformers' compiled generate, for reference)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    variants = list(args.variant)
    names = [n for n, _ in variants]
    if variants and "dense" not in names:
        p.error("one --variant must be named dense (the reference)")
    if len(set(names)) != len(names):
        p.error(f"variant names must be unique (got {', '.join(names)})")
    if not variants and not args.llama_8b and not args.smoke:
        p.error("nothing to measure: give --variant NAME=PATH (one named dense), --llama-8b or --smoke")
    tmp = Path(tempfile.mkdtemp(prefix="sieve-deploy-"))
    try:
        return run(args, variants or (smoke_folders(tmp) if args.smoke else []), argv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, variants: list[tuple[str, Path]], argv: list[str] | None) -> Path:
    device = bench_device(args.smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    variants = sorted(variants, key=lambda v: v[0] != "dense")  # dense first: its figures are the ratios' reference

    compile_settings = CompileSettings(backend=args.compile_backend or ("aot_eager" if args.smoke else "inductor"))
    drivers = tuple(args.compiled_drivers.split(","))
    if "loop" not in drivers or not set(drivers) <= {"loop", "generate"}:
        raise SystemExit(f"--compiled-drivers {args.compiled_drivers}: give loop, optionally with generate")
    settings: dict[str, Any] = {
        "prefill": (2, 16) if args.smoke else (64, 512),
        "decode_batches": (1, 2) if args.smoke else (1, 32),
        "prompt_len": 8 if args.smoke else 16,
        "new_tokens": args.new_tokens or (4 if args.smoke else 128),
        "repeats": 1 if args.smoke else 3,
        "compiled_drivers": drivers,
        "dtype": str(dtype).removeprefix("torch."),
        "compile": compile_settings.model_dump(),
    }
    command = " ".join(sys.argv) if argv is None else " ".join(["benchmarks/deploy.py", *argv])
    body: dict[str, Any] = {**provenance(), "command": command, "settings": settings, "rows": []}
    rows: list[dict[str, Any]] = []

    def record(model: torch.nn.Module, label: str, variant: str, folder: Path | None) -> None:
        row = {"model": label, "variant": variant, "path": str(folder) if folder is not None else None,
               **measure(model, device, settings, compile_settings, folder)}
        rows.append(row)
        body["rows"] = with_ratios(rows)
        print(table_line(body["rows"][-1], settings["decode_batches"]), flush=True)
        write_result("deploy", body, args.out_dir, args.tag)  # after every row: a crash keeps what was measured

    for name, folder in variants:
        model = sieve.load_pretrained(folder, dtype=dtype).to(device)
        record(model, "folders" if not args.smoke else "llama-smoke (random)", name, folder)
        del model
        free(device)

    if args.llama_8b:
        config = SMOKE_LLAMA if args.smoke else LLAMA_8B
        label = "llama-tiny (random)" if args.smoke else "llama-8b (random)"
        removed = removed_blocks(config["num_hidden_layers"], args.depth_fraction)
        body["llama_8b"] = {"config": config, "depth_fraction": args.depth_fraction, "removed_blocks": removed}
        model = random_llama(config, device, dtype)
        record(model, label, "dense", None)
        free(device)
        remove_blocks(model, removed)
        free(device)
        record(model, label, "depth", None)
        del model
        free(device)

    path = write_result("deploy", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
