"""A search run directory: create or resume ``runs/NAME/`` and execute the search in it.

Layout::

    runs/NAME/
      config.yaml            fully resolved SearchConfig (``sieve search --config`` reproduces it)
      stats/                 calibration statistics (safetensors), reused on resume
      checkpoint/state.json  GA population, RNG state, fitness cache, counters (data only)
      history.jsonl          one line per generation: best/median fitness, budget, tokens, seconds
      best_allocation.json   sieve.allocation/v1, rewritten every generation
      results.json           final table: dense / uniform / OWL / best on the test split

Each generation writes ``best_allocation.json`` and the history line first and the checkpoint last,
all atomically; on resume, history lines past the checkpoint are dropped, so a kill at any moment
loses at most the generation in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from sieve.calibrate import ensure_stats
from sieve.config import EvalSettings, SearchConfig, digest, from_dict, load_yaml, to_dict
from sieve.data.general import token_blocks
from sieve.errors import SieveError
from sieve.evaluate.loglik import encode_task
from sieve.evaluate.quality import MAX_LENGTH, QualityProbe, QualityReport
from sieve.io import append_jsonl, read_jsonl, write_json, write_text, write_yaml
from sieve.prune.allocation import Allocation, weights_hash
from sieve.prune.owl import owl_allocation
from sieve.prune.pruner import ModelPruner
from sieve.search.checkpoint import Checkpoint, cache_key
from sieve.search.evaluator import CandidateEvaluator, EvaluationBackend, InProcessBackend, StagePlan
from sieve.search.fitness import Fitness, FitnessInputs
from sieve.search.loop import GenerationRecord, Search
from sieve.search.operators import repair_budget
from sieve.search.space import SearchSpace, SpaceSpec
from sieve.stats import MatrixStats
from sieve.workspace import Workspace

log = logging.getLogger(__name__)

def default_run_dir(config: SearchConfig, root: Path = Path("runs")) -> Path:
    model = Path(config.model).name.replace(".", "_")
    task = Path(config.task).stem
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{model}-{task}-b{config.budget:g}-{stamp}"


def _first_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: run has {a!r}, now {b!r}"
    return None


def open_run(config: SearchConfig | None, run_dir: Path | None, *, resume: bool, overrides: dict[str, Any] | None = None) -> tuple[SearchConfig, Path]:
    """Resolve ``(config, run_dir)``; a resume that changes the identity of the run is refused."""
    if resume:
        assert run_dir is not None
        if not (run_dir / "config.yaml").exists():
            raise SieveError(f"{run_dir} is not a sieve run directory (no config.yaml)")
        saved = from_dict(SearchConfig, load_yaml(run_dir / "config.yaml"))
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        merged = from_dict(SearchConfig, {**to_dict(saved), **overrides})
        diff = _first_difference(saved.identity(), merged.identity())
        if diff:
            raise SieveError(f"cannot resume {run_dir} with a changed configuration ({diff})")
        write_yaml(run_dir / "config.yaml", to_dict(merged))
        return merged, run_dir
    assert config is not None
    run_dir = run_dir or default_run_dir(config)
    if (run_dir / "checkpoint" / "state.json").exists():
        raise SieveError(f"{run_dir} already holds a search; resume it with: sieve search --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", to_dict(config))
    return config, run_dir


@dataclass
class Prepared:
    """Everything built from a config before the first generation."""

    workspace: Workspace
    space: SearchSpace
    window: tuple[int, int]
    uniform: Allocation
    owl: Allocation
    seeds: list[np.ndarray]
    evaluator: CandidateEvaluator
    provenance: dict[str, Any]
    stats_seconds: dict[str, float]
    settings: EvalSettings
    stats: dict[str, MatrixStats]

    @property
    def pruner(self) -> ModelPruner:
        return self.evaluator.pruner


def open_workspace(config: SearchConfig) -> Workspace:
    return Workspace.open(
        config.model,
        task=config.task,
        general=config.general,
        dtype=config.dtype,
        device=config.device,
        seed=config.seed,
        max_calibration=config.calibration.task_examples,
        max_validation=config.validation_examples,
        max_test=config.evaluation.test_examples,
    )


def build_evaluator(
    config: SearchConfig, ws: Workspace, space: SearchSpace, method, stats: dict[str, MatrixStats]
) -> CandidateEvaluator:
    """The candidate evaluator every backend runs: pruner (dense copy + level thresholds), fitness
    with its dense references, and the stage plan. Built identically in-process and in Ray actors."""
    pruner = ModelPruner(space.matrices, method, stats)
    pruner.precompute_levels(space.row_counts())
    encoded = encode_task(ws.task.validation, ws.tokenizer, MAX_LENGTH)
    fitness = Fitness(config.fitness, config.general_weight)
    general_blocks = None
    if fitness.needs_general:
        general_blocks = token_blocks(
            ws.corpus.calibration[::-1], ws.tokenizer, config.general_fitness_blocks, config.calibration.block_len
        )
    inputs = FitnessInputs(encoded, general_blocks, config.batch_size)
    fitness.prepare(ws.model, inputs)
    plan = StagePlan.build(len(encoded), config.stages, config.keep, config.seed)
    return CandidateEvaluator(ws.model, space, pruner, fitness, inputs, plan)


def prepare(config: SearchConfig, run_dir: Path, extra_seeds: Sequence[dict[str, float]] | None = None) -> Prepared:
    ws = open_workspace(config)
    spec = SpaceSpec.load(config.space)
    space = SearchSpace(spec, ws.matrices)
    window = space.budget_window(config.budget)
    method = spec.method.build()
    provenance = {
        "model": ws.loaded.model_id,
        "weights_hash": weights_hash(ws.matrices),
        "method": method.describe(),
        "space": spec.name,
        "budget": config.budget,
        "task": config.task,
        "fitness": config.fitness,
        "config_digest": digest(config),
    }
    stats, timings = ensure_stats(
        ws.model,
        ws.tokenizer,
        space.matrices,
        method.sources,
        model_id=ws.loaded.model_id,
        cfg=config.calibration,
        general=ws.corpus,
        task_texts=ws.task.calibration_texts(),
        task_name=config.task,
        stats_dir=run_dir / "stats",
    )
    uniform = Allocation.uniform(space.matrices, config.budget) if not space.pattern.structured else Allocation(
        {}, space.pattern
    )
    owl = owl_allocation(space.matrices, method, stats, config.budget)
    rng = np.random.default_rng(config.seed)
    costs = [g.costs for g in space.genes]
    starts = [uniform.sparsity, owl.sparsity, *(extra_seeds or [])]
    seeds = [repair_budget(space.nearest_genome(a), costs, space.lower, space.upper, window, rng) for a in starts]
    evaluator = build_evaluator(config, ws, space, method, stats)
    return Prepared(ws, space, window, uniform, owl, seeds, evaluator, provenance, timings.seconds,
                    config.evaluation, stats)


class SearchRun:
    """Executes a search in its run directory: checkpoints, history, best allocation, results."""

    def __init__(self, config: SearchConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self.identity = digest(config.identity())

    def execute(
        self,
        *,
        backend_factory: Callable[[Prepared], EvaluationBackend] | None = None,
        on_generation: Callable[[GenerationRecord], None] | None = None,
        report: bool = True,
        extra_seeds: Sequence[dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) to ``config.generations``; ``extra_seeds`` (per-matrix sparsity maps)
        join uniform and OWL in the initial population, e.g. a warm start from another budget."""
        prepared = prepare(self.config, self.run_dir, extra_seeds)
        if backend_factory is None:
            backend_factory = default_backend(self.config, self.run_dir)
        backend = backend_factory(prepared)
        space = prepared.space

        def save(ckpt: Checkpoint, record: GenerationRecord) -> None:
            genome = np.array(record.best_genome)
            achieved = space.cost(genome) / space.total
            space.allocation(genome).save(
                self.run_dir / "best_allocation.json",
                **prepared.provenance,
                achieved_sparsity=achieved,
                fitness_value=record.best,
                generation=record.generation,
            )
            append_jsonl(self.run_dir / "history.jsonl", {**asdict(record), "budget": self.config.budget, "achieved_sparsity": achieved})
            ckpt.save(self.run_dir / "checkpoint")

        search = Search(
            space,
            prepared.window,
            prepared.seeds,
            backend,
            prepared.evaluator.plan,
            population=self.config.population,
            offspring=self.config.offspring,
            seed=self.config.seed,
            identity=self.identity,
            save=save,
            on_generation=on_generation,
        )
        ckpt = Checkpoint.load(self.run_dir / "checkpoint")
        if ckpt is not None:
            if ckpt.identity != self.identity:
                raise SieveError(f"checkpoint in {self.run_dir} belongs to another configuration")
            history = [r for r in read_jsonl(self.run_dir / "history.jsonl") if r["generation"] <= ckpt.generation]
            write_text(self.run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            search.restore(ckpt)
            log.info("resumed %s at generation %d", self.run_dir, ckpt.generation)
        try:
            search.run(self.config.generations)
        finally:
            timings = backend.timings().as_dict()
            backend.close()
        best, best_f = search.best()
        outcome: dict[str, Any] = {
            "best_fitness": best_f,
            "best_genome": best.tolist(),
            "achieved_sparsity": space.cost(best) / space.total,
            "evaluations": search.evaluations,
            "tokens": search.tokens,
            "search_seconds": search.seconds,
            "stats_seconds": prepared.stats_seconds,
            "timings": timings,
            "uniform_fitness": _cached_full(search, prepared.seeds[0]),
            "owl_fitness": _cached_full(search, prepared.seeds[1]),
        }
        if report:
            outcome["table"] = final_table(prepared, best)
            outcome["per_type"] = per_type_table(space.allocation(best), space)
        write_json(self.run_dir / "results.json", outcome)
        return outcome


def default_backend(config: SearchConfig, run_dir: Path) -> Callable[[Prepared], EvaluationBackend]:
    """In-process unless ``--workers N`` or ``--ray-address`` asks for Ray actors."""
    if config.workers == 0 and config.ray_address is None:
        return lambda prepared: InProcessBackend(prepared.evaluator)

    def ray_backend(prepared: Prepared) -> EvaluationBackend:
        from sieve.search.ray_backend import RayBackend

        return RayBackend(config, prepared.stats, run_dir)

    return ray_backend


def _cached_full(search: Search, genome: np.ndarray) -> float | None:
    entry = search.cache.get(cache_key(genome, search.plan.final))
    return entry[0] if entry else None


def final_table(prepared: Prepared, best: np.ndarray) -> list[dict[str, Any]]:
    """Dense vs uniform vs OWL vs best-found on the held-out test split and general text."""
    ws, pruner, space = prepared.workspace, prepared.pruner, prepared.space
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, prepared.settings)
    rows = []
    method = pruner.method.name
    for label, allocation in (
        ("dense", None),
        (f"uniform-{method}", prepared.uniform),
        (f"owl-{method}", prepared.owl),
        ("sieve-search", space.allocation(best)),
    ):
        if allocation is None:
            pruner.restore()
        else:
            pruner.apply(allocation)
        report: QualityReport = probe.measure(ws.model, space.matrices)
        rows.append({"method": label, **report.as_dict()})
    pruner.restore()
    return rows


def per_type_table(allocation: Allocation, space: SearchSpace) -> dict[str, dict[str, float]]:
    """Per block × matrix type sparsity of an allocation (compact view for the report)."""
    table: dict[str, dict[str, float]] = {}
    for m in space.matrices:
        table.setdefault(str(m.block), {})[m.kind] = round(allocation.sparsity.get(m.name, 0.0), 4)
    return table
