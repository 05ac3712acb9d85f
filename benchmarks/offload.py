"""A model larger than the GPU: candidate evaluation with decoder blocks streamed from host memory.

    python benchmarks/offload.py [--model llama-8b] [--cap-gb 12] [--candidates 4] [--smoke]

Runs the real candidate-evaluation path (the built-in task's validation set, task-NLL fitness,
``on_the_fly`` pruner) on a random-weight Llama twice: with the whole model on the GPU, and with the
process's GPU memory capped (``torch.cuda.set_per_process_memory_fraction``) below the model's
weights, so that only the blocks that fit stay resident and the others are streamed
(:mod:`sieve.models.offload`). Reports seconds per candidate and peak GPU memory of both, the
slowdown, and whether every candidate's fitness — and every pruned weight of a sample of matrices —
is bit-identical between the two. ``--smoke`` streams a tiny model on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, provenance, sync, write_result  # noqa: E402
from throughput import SMOKE_SEARCH, build_model, random_genomes  # noqa: E402

log = logging.getLogger("benchmarks.offload")


def evaluate(model, name: str, device: torch.device, budget_gb: float | None, search: dict, inputs: dict,
             n: int) -> dict:
    from sieve.config import validate
    from sieve.models.loading import LoadedModel
    from sieve.search.config import SearchConfig
    from sieve.search.evaluator import build_evaluator
    from sieve.search.space import SearchSpace
    from sieve.stats.calibrate import Statistics
    from sieve.workspace import Workspace, place_on_gpu

    cfg = validate(SearchConfig, {**search, **inputs, "budget": 0.5, "pruner_mode": "on_the_fly",
                                  "space": {"name": "offload", "method": {"name": "magnitude"}}})
    task_ws = Workspace.open(inputs["model"], task=cfg.task, general=None, dtype="float32", device="cpu",
                             split=cfg.split())
    loaded = LoadedModel(model, task_ws.tokenizer, name)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        place_on_gpu(loaded, str(device), budget_gb)
    elif budget_gb is not None:  # smoke: stream on the CPU
        from sieve.models.adapters import adapter_for
        from sieve.models.offload import BlockStreamer

        _, blocks = adapter_for(model).blocks(model)
        loaded.streamer = BlockStreamer(model, blocks, "cpu", resident=1)
    ws = Workspace(loaded, task_ws.task, None)
    space = SearchSpace(cfg.space, ws.matrices)
    evaluator = build_evaluator(cfg, ws, space, Statistics({}))
    genomes = random_genomes(space, space.budget_window(0.5), n + 1, 3)
    evaluator.evaluate(genomes[0], evaluator.plan.final)  # warm-up (compiles the fused mask)
    sync(device)
    start = time.perf_counter()
    values = [evaluator.evaluate(g, evaluator.plan.final).value for g in genomes[1:]]
    sync(device)
    seconds = (time.perf_counter() - start) / n
    sample = [m.name for m in space.matrices[:: max(1, len(space.matrices) // 8)]]
    pruner = evaluator.pruner
    weights = {}
    for name_ in sample:  # the last candidate's pruned weights, computed where the forward computes them
        m = pruner.by_name[name_]
        weights[name_] = pruner.weight_at(name_, m.stored.to(pruner.exec_device[name_])
                                          .t() if m.transposed else m.stored.to(pruner.exec_device[name_])).cpu()
    out = {"seconds_per_candidate": seconds, "fitness": values, "weights": weights,
           "streamed_blocks": len(loaded.streamer.streamed) if loaded.streamer is not None else 0,
           "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
           "weights_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30}
    pruner.release()
    return out


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-8b")
    p.add_argument("--cap-gb", type=float, default=12.0, help="GiB the capped run may use for the model's weights")
    p.add_argument("--room-gb", type=float, default=12.0, help="GiB beyond the weights' budget: thresholds, activations, slots")
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="offload")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    device = bench_device(args.smoke)
    if args.smoke:
        import tempfile

        from common import smoke_inputs

        name, inputs = "llama-tiny", smoke_inputs(Path(tempfile.mkdtemp(prefix="sieve-smoke-")))
        search = SMOKE_SEARCH
    else:
        from sieve.config import load_yaml
        from sieve.resources import builtin_file

        name, inputs = args.model, {"model": "smollm2-135m", "task": "rotten_tomatoes"}
        search = {**load_yaml(builtin_file("configs", "gpu")), "batch_candidates": 1}  # one candidate per forward, both arms
    model, _, _ = build_model(name, device)  # built on the device; the capped run moves it to host memory
    free = uncapped = evaluate(model, name, device, None, search, inputs, args.candidates)
    if device.type == "cuda":
        model.to("cpu")
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        cap_total = (args.cap_gb + args.room_gb) * 2**30  # the weights' budget plus room for thresholds, activations
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_total / total), device.index or 0)
    capped = evaluate(model, name, device, args.cap_gb, search, inputs, args.candidates)
    same_fitness = free["fitness"] == capped["fitness"]
    same_weights = all(torch.equal(free["weights"][k], capped["weights"][k]) for k in free["weights"])
    body: dict[str, Any] = {
        **provenance(), "model": name, "cap_gb": args.cap_gb, "candidates": args.candidates,
        "uncapped": {k: v for k, v in uncapped.items() if k != "weights"},
        "capped": {k: v for k, v in capped.items() if k != "weights"},
        "slowdown": capped["seconds_per_candidate"] / uncapped["seconds_per_candidate"],
        "same_fitness": same_fitness, "same_weights": same_weights,
    }
    log.warning("uncapped %.3fs/candidate, capped %.3fs (%d blocks streamed): %.2fx; fitness equal %s, weights equal %s",
                uncapped["seconds_per_candidate"], capped["seconds_per_candidate"], capped["streamed_blocks"],
                body["slowdown"], same_fitness, same_weights)
    path = write_result("offload", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
