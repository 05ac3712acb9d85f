"""Throughput benchmark: what one candidate evaluation costs, what the search loop achieves, and how
it scales over actors.

    python benchmarks/throughput.py [--models smollm2-135m,llama-1b,llama-8b] [--tokens 16384]
                                    [--candidates 12] [--modes in_place,on_the_fly] [--search-loop]
                                    [--graphs on,off] [--lanes 1,8] [--batch-candidates 1,16] [--packed-rows on,off]
                                    [--no-candidate-rows] [--whole-search [--generations N]] [--ray-actors 1,2] [--smoke]

**Candidate rows** (one per model and pruner mode): the time of one candidate split into apply /
forward / overhead against a dense forward on the same tokens, candidates per second, peak GPU
memory relative to the model's weight bytes, and the forward's achieved TFLOP/s against this
device's measured bf16 matmul peak. Candidates are random budget-feasible genomes of the default
``per_matrix`` space at budget 0.5 (every matrix changes between candidates: the worst case).
``in_place`` writes the pruned weights once per candidate from a dense copy; ``on_the_fly`` keeps
only the dense weights and computes each pruned weight inside every forward (so its "apply" is ~0
and its forward carries the masking).

**Search-loop rows** (``--search-loop``, one per pruner mode and ``--graphs`` setting): the real candidate-evaluation path of a search
(:func:`~sieve.search.evaluator.build_evaluator`: the built-in task's validation examples scored
with the task-NLL fitness, shared few-shot prefix, the ``gpu`` preset's batch size) on random
genomes at the first and at the final stage, as forward tokens per second, next to the same
model's dense forward tokens per second on full 64 × 512 batches, and the peak GPU memory over the
weights. On the fly with ``--graphs on`` is the graph-safe pruner (one copy of the weights).

**Whole-search rows** (``--whole-search``, one per pruner mode): a whole search through the real loop
(the GA's offspring, every stage, checkpoints) with the ``gpu`` preset and the magnitude score:
forward tokens/s over the whole loop and over generations 2 onwards, against the dense forward's;
the seconds of generations 0 and 1 (compilation and graph capture); peak GPU memory over the weights.

``--ray-actors`` measures candidates/s of the real search path
(:class:`~sieve.search.ray_backend.RayBackend`, SmolLM2 on the task, the ``gpu`` preset) with 1 vs N
actors; more actors than GPUs share them (fractional GPUs).
``--smoke`` runs a tiny random model on the CPU in seconds (part of ``make test``).
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, forward_timer, provenance, smoke_inputs, sync, write_result  # noqa: E402

from sieve.models.adapters import find_matrices  # noqa: E402
from sieve.prune.pruner import ModelPruner  # noqa: E402
from sieve.search.operators import repair_budget  # noqa: E402
from sieve.search.space import SearchSpace, SpaceSpec  # noqa: E402
from sieve.search.strategies import Timings  # noqa: E402

log = logging.getLogger("benchmarks.throughput")

RANDOM_LLAMAS = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32000),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256),
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512),
}
COLUMNS = ["model", "mode", "dtype", "params", "tokens", "dense_forward_s", "apply_s", "forward_s", "overhead_s",
           "candidate_s", "candidate_over_dense", "candidates_per_s", "precompute_s", "peak_mem_gb", "weights_gb",
           "mem_over_model", "tflops", "peak_tflops"]


def matmul_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_model(name: str, device: torch.device, vocab: int | None = None):
    """``(model, tokenizer or None, vocab)``: a random Llama of a named size (at least ``vocab``
    embedding rows), or a built-in model."""
    if name in RANDOM_LLAMAS:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        sizes = RANDOM_LLAMAS[name]
        cfg = LlamaConfig(**{**sizes, "vocab_size": max(sizes["vocab_size"], vocab or 0)}, max_position_embeddings=4096)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(dtype_for(device))
        return model.eval(), None, cfg.vocab_size
    from sieve.models.loading import load_model

    loaded = load_model(name, dtype=str(dtype_for(device)).removeprefix("torch."), device=device)
    return loaded.model, loaded.tokenizer, loaded.model.config.vocab_size


def random_genomes(space: SearchSpace, window: tuple[int, int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [repair_budget(rng.integers(space.lower, space.upper + 1), space.costs, window, rng)
            for _ in range(n)]


def warm_up_genomes(space: SearchSpace, window: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Genomes applied before timing: three random ones, then the last with one gene moved, gene after
    gene, so that every kernel is compiled and every write path taken (a whole stack, one member of a
    stack written alone) — a one-off cost per process, not a candidate's."""
    genomes = random_genomes(space, window, 3, seed + 1000)
    moved = []
    for gene in range(space.n_genes):
        last = genomes[-1].copy()
        last[gene] = space.lower[gene] if last[gene] != space.lower[gene] else space.upper[gene]
        moved += [last, genomes[-1]]
    return [*genomes, *moved]


def measure_model(model, name: str, device: torch.device, mode: str, n_tokens: int, n_candidates: int,
                  seq_len: int, vocab: int) -> dict[str, Any]:
    mats = find_matrices(model)
    spec = SpaceSpec(name="throughput", method={"name": "magnitude"})
    space = SearchSpace(spec, mats)
    window = space.budget_window(0.5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    pruner = ModelPruner(space.matrices, spec.method, {}, mode=mode, contiguous=mode == "in_place")
    pruner.precompute_levels(space.row_counts())
    sync(device)
    precompute_s = time.perf_counter() - t0
    genomes = random_genomes(space, window, n_candidates, 0)
    batch = max(1, n_tokens // seq_len)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    forward = forward_timer(model, ids, device)
    forward()
    dense = statistics.median(forward() for _ in range(3))
    for genome in warm_up_genomes(space, window, 0):
        pruner.apply(space.allocation(genome))
    pruner.apply(space.allocation(genomes[0]))
    forward()
    apply_t, fwd_t, total_t = [], [], []
    for genome in genomes[1:]:
        sync(device)
        start = time.perf_counter()
        allocation = space.allocation(genome)
        a0 = time.perf_counter()
        pruner.apply(allocation)
        sync(device)
        a1 = time.perf_counter()
        f = forward()
        total_t.append(time.perf_counter() - start)
        apply_t.append(a1 - a0)
        fwd_t.append(f)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    pruner.release()
    del pruner
    candidate = statistics.mean(total_t)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    forward_s = statistics.mean(fwd_t)
    row = {
        "model": name, "mode": mode, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "params": params, "tokens": batch * seq_len, "dense_forward_s": dense,
        "apply_s": statistics.mean(apply_t), "forward_s": forward_s,
        "overhead_s": candidate - statistics.mean(apply_t) - forward_s, "candidate_s": candidate,
        "candidate_over_dense": candidate / dense, "candidates_per_s": 1 / candidate, "precompute_s": precompute_s,
        "peak_mem_gb": peak / 2**30, "weights_gb": weight_bytes / 2**30, "mem_over_model": peak / weight_bytes,
        "tflops": 2 * params * batch * seq_len / forward_s / 1e12,
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def magnitude_config(search: dict[str, Any], inputs: dict[str, str], **changes: Any):
    """The search config of a speed row: budget 0.5 and the magnitude score (no calibration statistics)."""
    from sieve.config import validate
    from sieve.search.config import SearchConfig

    return validate(SearchConfig, {**search, **inputs, **changes, "budget": 0.5,
                                   "space": {"name": "throughput", "method": {"name": "magnitude"}}})


def task_workspace(model, tokenizer, name: str, cfg, inputs: dict[str, str], row: str):
    """A workspace of ``model`` with the built-in task (and, for a random model, the built-in model's
    tokenizer to encode it), or ``None`` with a warning where that tokenizer outgrows the embedding."""
    from sieve.models.loading import LoadedModel
    from sieve.workspace import Workspace

    task_ws = Workspace.open(inputs["model"], task=cfg.task, general=None, dtype="float32", device="cpu",
                             split=cfg.split())
    if len(tokenizer or task_ws.tokenizer) > model.config.vocab_size:
        log.warning("%s: vocabulary smaller than the task tokenizer's; no %s row", name, row)
        return None
    return Workspace(LoadedModel(model, tokenizer or task_ws.tokenizer, name), task_ws.task, None)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_over_weights(model, device: torch.device) -> float | None:
    """Peak GPU memory since :func:`reset_peak_memory` over the model's weights' bytes (CPU: ``None``)."""
    if device.type != "cuda":
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return round(torch.cuda.max_memory_allocated(device) / weights, 3)


def dense_tokens_per_s(model, device: torch.device) -> float:
    """The dense forward's tokens/s on 64 × 512 random tokens (median of three)."""
    ids = torch.randint(0, model.config.vocab_size, (64, 512), generator=torch.Generator().manual_seed(2)).to(device)
    forward = forward_timer(model, ids, device)
    forward()
    return ids.numel() / statistics.median(forward() for _ in range(3))


def measure_search_loop(model, tokenizer, name: str, device: torch.device, search: dict[str, Any],
                        inputs: dict[str, str], n_candidates: int, mode: str, graphs: bool,
                        lanes: int = 1, batch_candidates: int = 1, packed_rows: bool = True) -> dict[str, Any]:
    """Forward tokens/s of the real candidate-evaluation path (pruner ``mode``, CUDA graphs on or
    off, lanes, candidates per forward, packed rows or length buckets only) vs the dense forward's
    tokens/s, with the per-candidate split into apply and scoring and each stage's forwards per
    scoring run (the shared prefix's included)."""
    from sieve.search.evaluator import build_evaluator
    from sieve.stats.calibrate import Statistics

    cfg = magnitude_config(search, inputs, pruner_mode=mode, cuda_graphs=graphs, lanes=lanes,
                           batch_candidates=batch_candidates, packed_rows=packed_rows)
    ws = task_workspace(model, tokenizer, name, cfg, inputs, "search-loop")
    if ws is None:
        return None
    space = SearchSpace(cfg.space, ws.matrices)
    window = space.budget_window(0.5)
    reset_peak_memory(device)
    evaluator = build_evaluator(cfg, ws, space, Statistics({}))
    execution = evaluator.execution
    genomes = random_genomes(space, window, n_candidates + 1, 1)
    for genome in warm_up_genomes(space, window, 1):
        evaluator.pruner.apply(space.allocation(genome))
    for stage in (evaluator.plan.final, 0):  # warm-up: captures each stage's graph in every lane
        evaluator.evaluate_many([genomes[0]] * execution.lanes, stage)
    rows = {}
    for stage in (0, evaluator.plan.final):
        sync(device)
        start, tokens = time.perf_counter(), 0
        before = Timings(**vars(evaluator.timings))
        tokens = sum(m.tokens for m in evaluator.evaluate_many(genomes[1:], stage))
        sync(device)
        seconds = time.perf_counter() - start
        t = evaluator.timings
        n = len(genomes[1:])
        rows[stage] = (tokens / seconds, n / seconds, evaluator.plan.sizes[stage], (t.apply - before.apply) / n,
                       (t.forward - before.forward) / n, t.graphed - before.graphed)
    peak_over_weights = peak_memory_over_weights(model, device)
    used_lanes = execution.lanes
    forwards = {s: sorted({len(p.batches) + (p.prefix is not None) for (i, _), p in evaluator.inputs.scorer.plans.items()
                           if i == tuple(evaluator.plan.indices(s))}) for s in (0, evaluator.plan.final)}
    per_forward = [evaluator.plan.per_forward(s, execution.candidates_per_forward) for s in (0, evaluator.plan.final)]
    evaluator.close()
    evaluator.pruner.release()
    dense_tokens_s = dense_tokens_per_s(model, device)
    out = {"model": name, "mode": evaluator.pruner.mode, "cuda_graphs": graphs, "lanes": used_lanes,
           "batch_candidates": batch_candidates, "candidates_per_forward": per_forward, "packed_rows": packed_rows,
           "batch_size": cfg.batch_size, "peak_mem_over_weights": peak_over_weights,
           "dense_tokens_per_s": round(dense_tokens_s)}
    for stage, (tok_s, cand_s, examples, apply_s, score_s, graphed) in rows.items():
        key = "first" if stage == 0 else "final"
        out.update({f"{key}_stage_examples": examples, f"{key}_stage_tokens_per_s": round(tok_s),
                    f"{key}_stage_candidates_per_s": round(cand_s, 3),
                    f"{key}_stage_over_dense": round(tok_s / dense_tokens_s, 4),
                    f"{key}_stage_apply_ms": round(1e3 * apply_s, 2), f"{key}_stage_score_ms": round(1e3 * score_s, 2),
                    f"{key}_stage_graphed": graphed, f"{key}_stage_forwards": forwards[stage]})
    return out


def measure_whole_search(model, tokenizer, name: str, device: torch.device, search: dict[str, Any],
                         inputs: dict[str, str], generations: int | None = None,
                         mode: str = "auto") -> dict[str, Any] | None:
    """A whole search on ``model`` through the real loop (:class:`~sieve.search.run.SearchRun`: the
    GA's offspring, multi-fidelity stages, checkpoints), the ``gpu`` preset with the magnitude score
    (no calibration statistics needed for a random model): forward tokens per second of the whole loop
    and of generations 2 onwards (after compilation and capture) against the dense forward's, with
    pruner ``mode``, and the peak GPU memory over the weights."""
    from sieve.search.run import SearchRun
    from sieve.search.rundir import RunDir
    from sieve.stats.calibrate import Statistics

    changes = {"generations": generations} if generations else {}
    cfg = magnitude_config(search, inputs, pruner_mode=mode, **changes)
    ws = task_workspace(model, tokenizer, name, cfg, inputs, "whole-search")
    if ws is None:
        return None
    records = []
    run = RunDir(Path(tempfile.mkdtemp(prefix="sieve-whole-")) / "run")
    reset_peak_memory(device)
    outcome = SearchRun(run, cfg).execute(workspace=ws, statistics=Statistics({}), report=False,
                                          on_generation=records.append)
    peak_over_weights = peak_memory_over_weights(model, device)
    dense = dense_tokens_per_s(model, device)
    first, last = records[1], records[-1]
    steady = (last.tokens - first.tokens) / (last.seconds - first.seconds)
    whole = last.tokens / last.seconds
    timings = outcome["timings"]
    return {"model": name, "generations": cfg.generations, "candidates": outcome["evaluations"],
            "tokens": last.tokens, "loop_s": round(last.seconds, 2), "apply_s": round(timings["apply_s"], 2),
            "score_s": round(timings["forward_s"], 2), "dense_tokens_per_s": round(dense),
            "loop_tokens_per_s": round(whole), "loop_over_dense": round(whole / dense, 4),
            "steady_tokens_per_s": round(steady), "steady_over_dense": round(steady / dense, 4),
            "generation_0_s": round(records[0].seconds, 2), "generation_1_s": round(first.seconds - records[0].seconds, 2),
            "best_fitness": outcome["best_fitness"], "batch_candidates": cfg.batch_candidates,
            "packed_rows": cfg.packed_rows, "pruner_mode": cfg.pruner_mode, "peak_mem_over_weights": peak_over_weights}


def measure_ray(actors: list[int], base: dict[str, Any], n_candidates: int) -> list[dict[str, Any]]:
    """Candidates/s of the real search evaluation path with 1..N Ray actors."""
    import ray

    from sieve.config import validate
    from sieve.search.config import SearchConfig
    from sieve.search.ray_backend import RayBackend
    from sieve.search.run import prepare
    from sieve.search.rundir import RunDir

    rows = []
    run = RunDir(tempfile.mkdtemp(prefix="sieve-throughput-"))
    cfg = validate(SearchConfig, base)
    prepared = prepare(cfg, run.stats)
    genomes = random_genomes(prepared.space, prepared.window, n_candidates, 1)
    final = prepared.evaluator.plan.final
    for n in actors:
        backend = RayBackend(validate(SearchConfig, {**base, "workers": n}), prepared.statistics, run)
        backend.evaluate(genomes[:n], final)  # warm-up: first forward per actor
        start = time.perf_counter()
        backend.evaluate(genomes, final)
        seconds = time.perf_counter() - start
        backend.close()
        rows.append({"model": f"{base['model']} (Ray)", "actors": n, "candidates": len(genomes), "seconds": round(seconds, 3),
                     "candidates_per_s": round(len(genomes) / seconds, 3)})
        log.warning("ray actors=%d: %.2f candidates/s", n, len(genomes) / seconds)
    ray.shutdown()
    base_rate = rows[0]["candidates_per_s"]
    for r in rows:
        r["speedup"] = round(r["candidates_per_s"] / base_rate, 3)
    return rows


SMOKE_SEARCH = {"validation_examples": 12, "stages": [4], "promote": [2], "batch_size": 8, "device": "cpu",
                "calibration": {"general_blocks": 4, "block_len": 32, "task_examples": 8, "batch_size": 4},
                "evaluation": {"test_examples": 8, "ppl_blocks": 2, "block_len": 32}}


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,llama-1b,llama-8b")
    p.add_argument("--modes", default="in_place,on_the_fly")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--search-loop", action="store_true")
    p.add_argument("--search-candidates", type=int, default=8)
    p.add_argument("--graphs", default="on,off", help="search-loop rows with CUDA graphs on and/or off")
    p.add_argument("--lanes", default="1", help="search-loop rows (with graphs) for these lane counts")
    p.add_argument("--batch-candidates", default="1",
                   help="search-loop rows (one lane) for these limits of candidates per forward")
    p.add_argument("--whole-search", action="store_true",
                   help="a whole search's row per model (the gpu preset's generations, or --generations)")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--packed-rows", default="on", help="search-loop rows with packed rows on (where cheaper) and/or off")
    p.add_argument("--candidate-rows", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ray-actors", default="")
    p.add_argument("--ray-candidates", type=int, default=24)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    device = bench_device(args.smoke)
    models = ["llama-tiny"] if args.smoke else [m for m in args.models.split(",") if m and m != "none"]
    tokens, seq_len = (256, 32) if args.smoke else (args.tokens, args.seq_len)
    tag = args.tag or ("smoke" if args.smoke else "")
    body = {**provenance(), "peak_tflops": matmul_peak(device), "columns": COLUMNS, "rows": [], "search_loop": [], "whole_search": [],
            "ray": []}
    smoke = smoke_inputs(Path(tempfile.mkdtemp(prefix="sieve-smoke-"))) if args.smoke else None
    if args.smoke:
        search, inputs = SMOKE_SEARCH, smoke
    else:
        from sieve.config import load_yaml
        from sieve.resources import builtin_file

        search, inputs = load_yaml(builtin_file("configs", "gpu")), {"model": "smollm2-135m", "task": "rotten_tomatoes"}
    for name in models:
        model, tokenizer, vocab = build_model(name, device)
        for mode in args.modes.split(",") if args.candidate_rows else []:
            row = measure_model(model, name, device, mode, tokens, 3 if args.smoke else args.candidates, seq_len, vocab)
            row["peak_tflops"] = body["peak_tflops"]
            body["rows"].append(row)
            log.warning("%s", row)
            write_result("throughput", body, args.out_dir, tag)
        for mode in args.modes.split(",") if args.search_loop else []:
            for graphs in [False] if args.smoke else [g == "on" for g in args.graphs.split(",")]:
                lanes_ = [int(n) for n in args.lanes.split(",")] if graphs else [1]
                batches = [int(k) for k in args.batch_candidates.split(",") if int(k) > 1 and mode == "in_place"]
                packings = [v == "on" for v in args.packed_rows.split(",")]
                for lanes, batch, packed in [(n, 1, v) for n in lanes_ for v in packings] + [
                        (1, k, v) for k in batches for v in packings]:
                    loop = measure_search_loop(model, tokenizer, name, device, search, inputs,
                                               2 if args.smoke else args.search_candidates, mode, graphs, lanes, batch,
                                               packed)
                    if loop is not None:
                        body["search_loop"].append(loop)
                    log.warning("%s", loop)
                    write_result("throughput", body, args.out_dir, tag)
        for mode in args.modes.split(",") if args.whole_search else []:
            whole = measure_whole_search(model, tokenizer, name, device, search, inputs,
                                         2 if args.smoke else args.generations, mode)
            if whole is not None:
                body["whole_search"].append(whole)
            log.warning("%s", whole)
            write_result("throughput", body, args.out_dir, tag)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.ray_actors:
        if args.smoke:
            base = {**smoke, **SMOKE_SEARCH, "budget": 0.5}
        else:
            base = {**search, "model": "smollm2-135m", "budget": 0.5}
        body["ray"] = measure_ray([int(n) for n in args.ray_actors.split(",")], base,
                                  4 if args.smoke else args.ray_candidates)
    path = write_result("throughput", body, args.out_dir, tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
