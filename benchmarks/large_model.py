"""A model larger than the GPU, end to end through the CLI.

    python benchmarks/large_model.py [--model-dir DIR] [--cap-fraction 0.2] [--max-gpu-memory 6] [--smoke]

Saves a random-weight ~8B Llama (with SmolLM2's tokenizer) as a plain transformers folder, then runs
the real ``sieve search`` command on it twice with the same seed: once in a process whose GPU memory
is capped below the model's weights (``torch.cuda.set_per_process_memory_fraction``; with
``--max-gpu-memory`` the decoder blocks that do not fit are streamed from host memory, statistics
included), and once uncapped. Reports each arm's wall time, statistics and search seconds, seconds
per candidate and the most GPU memory the process held (``nvidia-smi``, CUDA context included), and
whether every generation's best and median fitness and best genome, and the final best genome and
fitness, agree between the arms.
``--smoke`` does the same with a tiny model on the CPU (no cap), in seconds.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, provenance, write_result  # noqa: E402
from throughput import build_model  # noqa: E402

from sieve.search.rundir import RunDir  # noqa: E402

log = logging.getLogger("benchmarks.large_model")

# the CLI in a process whose GPU memory is capped first (fraction >= 1: no cap)
CAPPED_CLI = ("import sys, torch\n"
              "fraction = float(sys.argv[1])\n"
              "if fraction < 1: torch.cuda.set_per_process_memory_fraction(fraction)\n"
              "sys.argv = ['sieve', *sys.argv[2:]]\n"
              "from sieve.cli import app\n"
              "app()\n")
SEARCH = {"validation_examples": 64, "stages": [16], "promote": [4], "offspring": 8, "population": 6,
          "generations": 2, "batch_size": 32, "calibration": {"general_blocks": 32, "task_examples": 32},
          "evaluation": {"test_examples": 100, "ppl_blocks": 8}}
SMOKE_SEARCH = {**SEARCH, "validation_examples": 12, "stages": [4], "promote": [2], "offspring": 3, "population": 3,
                "batch_size": 8, "calibration": {"general_blocks": 4, "block_len": 32, "task_examples": 8, "batch_size": 4},
                "evaluation": {"test_examples": 8, "ppl_blocks": 2, "block_len": 32}}


def save_random_model(name: str, folder: Path, device) -> int:
    """Save a random Llama of size ``name`` with the built-in SmolLM2 tokenizer; its weight bytes."""
    import torch

    from sieve.models.loading import load_model

    tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu").tokenizer
    model, _, _ = build_model(name, device, vocab=len(tokenizer))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return weights


class GpuMemoryWatch:
    """The most memory ``nvidia-smi`` reports in use on GPU 0 while the context is open (MiB)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.peak_mib, self._stop = enabled, 0, threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.peak_mib = max(self.peak_mib, int(out))

    def __enter__(self) -> GpuMemoryWatch:
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def run_arm(label: str, model_dir: Path, config: Path, run_dir: Path, fraction: float, max_gpu_memory: float | None,
            device: str, log_dir: Path) -> dict[str, Any]:
    args = ["search", "--model", str(model_dir), "--budget", "0.5", "--config", str(config), "--run-dir", str(run_dir),
            "--device", device]
    if max_gpu_memory is not None:
        args += ["--max-gpu-memory", str(max_gpu_memory)]
    start = time.perf_counter()
    with GpuMemoryWatch(device.startswith("cuda")) as watch, open(log_dir / f"large-model-{label}.log", "w") as out:
        proc = subprocess.run([sys.executable, "-c", CAPPED_CLI, str(fraction), *args], stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label}: sieve search exited {proc.returncode}; see {log_dir / f'large-model-{label}.log'}")
    run = RunDir.existing(run_dir)
    results = run.results()
    timings = results["timings"]
    return {"arm": label, "fraction": fraction, "max_gpu_memory_gib": max_gpu_memory, "wall_s": round(wall, 1),
            "stats_s": round(sum(results["stats_seconds"].values()), 1),
            "search_s": round(results["search_seconds"], 1), "candidates": timings["candidates"],
            "per_candidate_s": round(timings["total_s"] / timings["candidates"], 4),
            "gpu_peak_gib": round(watch.peak_mib / 1024, 2) if watch.enabled else None,
            "best_fitness": results["best_fitness"], "best_genome": results["best_genome"],
            "history": [(r["generation"], r["best"], r["median"], r["best_genome"]) for r in run.history()]}


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-8b")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--cap-fraction", type=float, default=0.2)
    p.add_argument("--max-gpu-memory", type=float, default=6.0)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    device = bench_device(args.smoke)
    work = Path(tempfile.mkdtemp(prefix="sieve-large-"))
    model_dir = args.model_dir or work / "model"
    name = "llama-tiny" if args.smoke else args.model
    body: dict[str, Any] = {**provenance(), "model": name, "search": SMOKE_SEARCH if args.smoke else SEARCH}
    if not (model_dir / "config.json").exists():
        body["weights_bytes"] = save_random_model(name, model_dir, device)
    config = work / "search.yaml"
    config.write_text(yaml.safe_dump(body["search"]))
    cap = 1.0 if args.smoke else args.cap_fraction
    arms = [("capped", cap, None if args.smoke else args.max_gpu_memory), ("uncapped", 1.0, None)]
    body["arms"] = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for label, fraction, budget in arms:
        row = run_arm(label, model_dir, config, work / f"run-{label}", fraction, budget, str(device), args.out_dir)
        body["arms"].append(row)
        log.warning("%s", {k: v for k, v in row.items() if k != "history"})
        write_result("large-model", body, args.out_dir, args.tag)
    capped, uncapped = body["arms"]
    body["identical"] = {key: capped[key] == uncapped[key] for key in ("history", "best_genome", "best_fitness")}
    body["slowdown_per_candidate"] = round(capped["per_candidate_s"] / uncapped["per_candidate_s"], 3)
    path = write_result("large-model", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
