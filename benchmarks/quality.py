"""Quality benchmark: every baseline and both searches on one model, task and set of splits.

    python benchmarks/quality.py [--budgets 0.5,0.6,0.7,2:4] [--rows dense,uniform,owl,search-general,search-task]
                                 [--seeds 0,1,2] [--search-config FILE] [--tag PART] [--smoke]

Rows (method names as in the results JSON): ``dense``, ``uniform-{magnitude,wanda,sparsegpt,fused}``,
``owl-{wanda,fused}``, ``uniform-lowrank-{general,task,fused}`` (every matrix the same fraction of
parameters really removed by data-aware factors), ``search-general`` (EvoPress's recipe in sieve:
per-matrix levels on general-text Wanda scores, KL to dense on general text, multi-step selection),
``search-task`` (sieve's default: fused scores, task NLL), ``search-lowrank`` (rank per matrix) and
``search-mixed`` (zeros or factors per matrix), ``search-lowrank-task`` (the low-rank search with the
task covariance alone instead of the fused one). Depth (whole decoder blocks; ``--rows depth`` for the
baselines): ``shortgpt-{general,task}``, ``angular-general``, ``greedy-task`` (each row lists its
``removed_blocks``), ``search-depth`` (sieve's depth search, task NLL), ``search-depth-general``
(EvoPress's depth search: general-text KL), ``search-deploy`` (per block kept or removed, per matrix
dense or factors) and ``search-deploy-block`` (per block: dense, factors at one shared fraction, or
removed). ``reduction`` is the fraction of prunable parameters really removed (factors, removed
blocks), ``sparsity`` the zeros. All rows share the calibration data, the splits and the
evaluation. Each invocation writes ``benchmarks/results/quality-<date>-<device>[-TAG].json``;
``benchmarks/report.py`` merges the parts into markdown. ``--smoke`` runs everything on a tiny
random model in seconds (it is part of ``make test``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, provenance, smoke_inputs, write_result  # noqa: E402

from sieve.config import load_yaml, to_dict, validate  # noqa: E402
from sieve.metrics.quality import QualityProbe  # noqa: E402
from sieve.primitives.lowrank import LowRank  # noqa: E402
from sieve.primitives.mask import Pattern  # noqa: E402
from sieve.prune.allocation import Allocation, AllocationFile  # noqa: E402
from sieve.prune.owl import owl_allocation  # noqa: E402
from sieve.prune.pruner import ModelPruner  # noqa: E402
from sieve.resources import builtin_file  # noqa: E402
from sieve.scores import get_method  # noqa: E402
from sieve.search.config import SearchConfig  # noqa: E402
from sieve.search.run import SearchRun, prepare  # noqa: E402
from sieve.search.rundir import RunDir  # noqa: E402
from sieve.stats.calibrate import CacheStore, ensure_stats  # noqa: E402

log = logging.getLogger("benchmarks.quality")

UNIFORM = ("magnitude", "wanda", "wanda-task", "sparsegpt", "fused")
OWL = ("wanda", "fused")
SEARCHES = {
    "search-general": {"space": "evopress", "fitness": "general_kl"},
    "search-task": {"space": "per_matrix", "fitness": "task_nll"},
    "search-lowrank": {"space": "lowrank", "fitness": "task_nll"},
    "search-mixed": {"space": "mixed", "fitness": "task_nll"},
    "search-lowrank-task": {"space": str(Path(__file__).resolve().parent / "spaces" / "lowrank_task.yaml"),
                            "fitness": "task_nll"},
    "search-lowrank-task-x64": {"space": str(Path(__file__).resolve().parent / "spaces" / "lowrank_task_x64.yaml"),
                                "fitness": "task_nll"},
    "search-depth": {"space": "depth", "fitness": "task_nll"},
    "search-depth-general": {"space": "depth", "fitness": "general_kl"},
    "search-deploy": {"space": "deploy", "fitness": "task_nll"},
    "search-deploy-block": {"space": "deploy_block", "fitness": "task_nll"},
}
STATS_FREE = {"dense", "depth", "search-depth", "search-depth-general"}  # rows that read no statistics
NEEDS_HESSIAN = {"uniform", "uniform-lowrank", "search-lowrank", "search-mixed", "search-lowrank-task",
                 "search-lowrank-task-x64", "search-deploy", "search-deploy-block"}  # SparseGPT's H and every factorisation's XᵀX
DEPTH_BASELINES = ("shortgpt-general", "shortgpt-task", "angular-general", "greedy-task")
COVARIANCES = ("general", "task", "fused")
GPU_SEARCH = load_yaml(builtin_file("configs", "gpu"))
SMOKE_SEARCH = {
    "validation_examples": 12, "stages": [4], "promote": [2], "offspring": 4, "population": 3, "generations": 2,
    "batch_size": 8, "calibration": {"general_blocks": 4, "block_len": 32, "task_examples": 8, "batch_size": 4},
    "evaluation": {"test_examples": 8, "ppl_blocks": 2, "block_len": 32}, "general_fitness_blocks": 2,
}


def _budget(text: str) -> tuple[float, Pattern]:
    pattern = Pattern.parse(text) if ":" in text else Pattern()
    return (pattern.sparsity if pattern.structured else float(text)), pattern


def run(args: argparse.Namespace) -> dict[str, Any]:
    inputs = smoke_inputs(Path(tempfile.mkdtemp(prefix="sieve-smoke-"))) if args.smoke else {
        "model": args.model, "task": args.task, "general": args.general}
    search_base = dict(SMOKE_SEARCH if args.smoke else GPU_SEARCH)
    if args.search_config:
        search_base.update(load_yaml(args.search_config))
    base = validate(SearchConfig, {**search_base, **inputs, "device": args.device, "budget": 0.5})
    cal, settings = base.calibration, base.evaluation
    ws = base.open_workspace()  # one workspace and one set of statistics for every row, searches included
    start = time.perf_counter()
    groups = set(args.rows.split(","))
    # stored once in the shared cache (a later invocation reuses them; each search's run directory
    # links to that file), Hessians only where a row reads them: a 1.5B model's are ~10 GB per source
    sources = () if groups <= STATS_FREE else ("general", "task")
    statistics = ensure_stats(ws.model, ws.tokenizer, ws.matrices, sources, weights_hash=ws.weights_hash,
                              cfg=cal, general=ws.corpus, task_texts=ws.task.calibration_texts(),
                              hessian=bool(groups & NEEDS_HESSIAN), store=CacheStore.for_model(ws.loaded.model_id))
    stats = statistics.per_matrix
    stats_seconds = time.perf_counter() - start
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, settings)
    rows: list[dict[str, Any]] = []
    body = {**provenance(), "model": ws.loaded.model_id, "task": inputs["task"], "general": inputs["general"],
            "command": " ".join(["benchmarks/quality.py", *(args.argv or [])]),
            "smoke": args.smoke, "calibration": to_dict(cal), "evaluation": to_dict(settings),
            "search": {k: v for k, v in to_dict(base).items() if k not in ("model", "task", "general")},
            "stats_seconds": stats_seconds, "stats_tokens": statistics.tokens, "rows": rows}
    tag = args.tag or ("smoke" if args.smoke else "")

    def record(method: str, budget: str, pattern: Pattern, seed: int | None, report, seconds: float, tokens: int,
               reduction: float = 0.0, blocks: list[int] | None = None) -> None:
        row = {"method": method, "budget": budget, "pattern": str(pattern), "seed": seed, "task_acc": report.task_acc,
               "task_nll": report.task_nll, "wiki_ppl": report.wiki_ppl, "sparsity": report.sparsity,
               "reduction": reduction, "seconds": seconds, "tokens": tokens}
        if blocks is not None:
            row["removed_blocks"] = blocks
        rows.append(row)
        write_result("quality", body, args.out_dir, tag)  # after every row: a cut-off run keeps what it measured
        log.warning("%-18s %-5s seed=%s acc=%.3f nll=%.3f ppl=%.2f sparsity=%.4f %.1fs", method, budget, seed,
                    report.task_acc, report.task_nll, report.wiki_ppl, report.sparsity, seconds)

    lowrank_pruners: dict[str, ModelPruner] = {}  # factors are computed once per covariance, for every budget
    if "dense" in groups:
        record("dense", "0", Pattern(), None, probe.measure(ws.model, ws.matrices), 0.0, 0)
    for budget_text in args.budgets.split(","):
        sparsity, pattern = _budget(budget_text)
        if "uniform" in groups:
            for name in UNIFORM:
                method = get_method({"name": "wanda", "source": "task"} if name == "wanda-task" else name)
                pruner = ModelPruner(ws.matrices, method, stats)
                t0 = time.perf_counter()
                pruner.apply(Allocation.uniform(ws.matrices, sparsity, pattern))
                record(f"uniform-{name}", budget_text, pattern, None, probe.measure(ws.model, ws.matrices),
                       time.perf_counter() - t0, 0)
                pruner.restore()
        if "uniform-lowrank" in groups and not pattern.structured:
            for cov in COVARIANCES:
                pruner = lowrank_pruners.setdefault(cov, ModelPruner(ws.matrices, None, stats, LowRank(covariance=cov)))
                t0 = time.perf_counter()
                allocation = Allocation.uniform_rank(ws.matrices, sparsity, pruner.lowrank.multiple_for)
                pruner.apply(allocation)
                record(f"uniform-lowrank-{cov}", budget_text, pattern, None, probe.measure(ws.model, ws.matrices),
                       time.perf_counter() - t0, 0, allocation.reduction(ws.matrices))
                pruner.restore()
        if "owl" in groups and not pattern.structured:
            for name in OWL:
                method = get_method(name)
                pruner = ModelPruner(ws.matrices, method, stats)
                t0 = time.perf_counter()
                pruner.apply(owl_allocation(ws.matrices, method, stats, sparsity))
                record(f"owl-{name}", budget_text, pattern, None, probe.measure(ws.model, ws.matrices),
                       time.perf_counter() - t0, 0)
                pruner.restore()
        if "depth" in groups and not pattern.structured:
            depth_rows(base, ws, statistics, probe, budget_text, sparsity, record)
        for label, overrides in SEARCHES.items():
            if label not in groups or pattern.structured:
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = validate(SearchConfig, {**to_dict(base), **overrides, "budget": sparsity, "seed": seed})
                run = RunDir(Path(args.runs) / f"{label}-b{budget_text}-s{seed}-{int(time.time())}")
                if cfg.split() == base.split():
                    outcome = SearchRun(run, cfg).execute(report=True, workspace=ws, statistics=statistics)
                else:  # another seed carves other validation / calibration documents: its own workspace
                    outcome = SearchRun(run, cfg).execute(report=True)
                best = next(r for r in outcome["table"] if r["method"] == "sieve-search")
                removed = AllocationFile.read(run.path / "best_allocation.json").removed_blocks
                record(label, budget_text, pattern, seed, _Row(best), outcome["search_seconds"], outcome["tokens"],
                       best["reduction"], blocks=sorted(removed) if cfg.space.depth else None)
    return body


def depth_rows(base: SearchConfig, ws, statistics, probe: QualityProbe, budget_text: str, budget: float,
               record) -> None:
    """The depth baselines at ``budget`` (as many whole blocks as it holds), exactly the ones that
    seed the depth search (:mod:`sieve.search.seeds`): ShortGPT's block influence on general and on
    task text, the angular run on general text, and the greedy task-aware choice (``k`` times, drop
    the block whose removal costs least task NLL on the validation split, scored by the search's own
    evaluator; the test split is read once, at the end). A row's seconds: the greedy choice's."""
    cfg = validate(SearchConfig, {**to_dict(base), "space": "depth", "fitness": "task_nll", "budget": budget})
    t0 = time.perf_counter()
    prepared = prepare(cfg, None, workspace=ws, statistics=statistics)
    seconds = time.perf_counter() - t0
    for label in DEPTH_BASELINES:
        allocation = prepared.baselines[label]
        prepared.pruner.apply(allocation)
        record(label, budget_text, Pattern(), None, probe.measure(ws.model, ws.matrices),
               seconds if label.startswith("greedy") else 0.0, 0, allocation.reduction(prepared.space.matrices),
               blocks=sorted(allocation.removed_blocks))
    prepared.evaluator.close()


class _Row:
    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--general", default="wikipedia")
    p.add_argument("--budgets", default="0.5,0.6,0.7,2:4")
    p.add_argument("--rows", default="dense,uniform,owl,search-general,search-task")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--search-config", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    return p


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    body = run(args)
    path = write_result("quality", body, args.out_dir, args.tag or ("smoke" if args.smoke else ""))
    print(path)
    return path


if __name__ == "__main__":
    main()
