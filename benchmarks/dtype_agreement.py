"""Does a bf16 search rank candidates as an fp32 one would?

    python benchmarks/dtype_agreement.py [--candidates 32] [--budget 0.5] [--search-config FILE] [--device D] [--smoke]

Builds one generation's worth of candidates of the default space — the initial population
(uniform, OWL and perturbations) plus random budget-feasible genomes — and scores every one on the
full validation set with the search's own evaluator, once with the model in float32 and once in
bfloat16 (same data, same statistics: those of the float32 model). Reports Spearman's and Kendall's
rank correlation of the two fitness vectors, the fitness difference, and whether both pick the same
best candidate. The settings are the ``gpu`` preset's, updated by ``--search-config``. ``--smoke`` runs the tiny random model on the CPU: it checks the script, its
correlation means nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, provenance, smoke_inputs, write_result  # noqa: E402

log = logging.getLogger("benchmarks.dtype_agreement")


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    n, agree = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            agree += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(agree / (n * (n - 1) / 2))


def main(argv: list[str] | None = None) -> Path:
    from sieve.config import load_yaml, validate
    from sieve.resources import builtin_file
    from sieve.search.config import SearchConfig
    from sieve.search.evaluator import build_evaluator
    from sieve.search.run import prepare

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--search-config", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="dtype")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        inputs = smoke_inputs(Path(tempfile.mkdtemp(prefix="sieve-smoke-")))
        base = {**inputs, "validation_examples": 12, "stages": [4], "promote": [2], "batch_size": 8, "device": "cpu",
                "calibration": {"general_blocks": 4, "block_len": 32, "task_examples": 8, "batch_size": 4}}
        low = "bfloat16"
    else:
        base = {**load_yaml(builtin_file("configs", "gpu")), "device": args.device}
        if args.search_config:
            base.update(load_yaml(args.search_config))
        low = "bfloat16"
    reference = validate(SearchConfig, {**base, "budget": args.budget, "dtype": "float32"})
    start = time.perf_counter()
    prepared = prepare(reference, None)
    space, rng = prepared.space, np.random.default_rng(0)
    from sieve.search.operators import repair_budget

    genomes = list(prepared.seeds) + [
        repair_budget(rng.integers(space.lower, space.upper + 1), space.costs, prepared.window, rng)
        for _ in range(args.candidates - len(prepared.seeds))]
    final = prepared.evaluator.plan.final
    full = np.array([prepared.evaluator.evaluate(g, final).value for g in genomes])
    prepared.evaluator.close()
    prepared.pruner.release()
    ws = prepared.workspace
    ws.loaded.model.to(getattr(torch, low))
    ws.__dict__.pop("weights_hash", None)
    low_config = validate(SearchConfig, {**base, "budget": args.budget, "dtype": low})
    evaluator = build_evaluator(low_config, ws, space, prepared.statistics)  # same statistics and data
    half = np.array([evaluator.evaluate(g, final).value for g in genomes])
    evaluator.close()
    evaluator.pruner.release()
    body: dict[str, Any] = {
        **provenance(), "candidates": len(genomes), "budget": args.budget, "low_dtype": low,
        "validation_examples": len(evaluator.inputs.task), "spearman": spearman(full, half),
        "kendall": kendall(full, half), "same_best": int(np.argmin(full)) == int(np.argmin(half)),
        "max_abs_diff": float(np.abs(full - half).max()), "mean_abs_diff": float(np.abs(full - half).mean()),
        "fitness_float32": full.tolist(), f"fitness_{low}": half.tolist(), "seconds": time.perf_counter() - start,
    }
    log.warning("spearman %.4f kendall %.4f same best %s", body["spearman"], body["kendall"], body["same_best"])
    path = write_result("dtype", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
