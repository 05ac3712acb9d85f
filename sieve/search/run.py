"""Run a search in its run directory: prepare once, loop generations, write results.

:func:`prepare` builds everything a search needs from its config — workspace, space, statistics,
uniform and OWL seeds, the candidate evaluator — and takes an already-open workspace and already
computed statistics, so Pareto probes, benchmarks and Ray actors reuse them instead of reloading.
:class:`SearchRun` is the stateful shell: it holds the run directory's lock for its lifetime, checks
a resume before writing anything (config identity and input digests in
:meth:`~sieve.search.rundir.RunDir.resumed_config`, the model's weights hash here), and writes the
checkpoint, history, best allocation and results through :class:`~sieve.search.rundir.RunDir`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sieve.config import differences, digest
from sieve.data.task_spec import resolve_task
from sieve.errors import SieveError
from sieve.metrics.quality import QualityProbe
from sieve.models.loading import resolve_model_path
from sieve.prune.allocation import Allocation, AllocationFile
from sieve.prune.owl import owl_allocation
from sieve.prune.pruner import ModelPruner
from sieve.scores.base import ScoringMethod
from sieve.search.checkpoint import Checkpoint, cache_key
from sieve.search.config import SearchConfig
from sieve.search.evaluator import CandidateEvaluator, EvaluationBackend, InProcessBackend, build_evaluator
from sieve.search.loop import GenerationRecord, Search
from sieve.search.operators import repair_budget
from sieve.search.rundir import RunDir
from sieve.search.space import SearchSpace
from sieve.stats.calibrate import Statistics, StatsStore, ensure_stats
from sieve.workspace import Workspace, resolve_device

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything built from a config before the first generation."""

    workspace: Workspace
    space: SearchSpace
    window: tuple[int, int]
    uniform: Allocation
    owl: Allocation
    uniform_rank: Allocation | None
    seeds: list[np.ndarray]
    evaluator: CandidateEvaluator
    statistics: Statistics
    config: SearchConfig

    @property
    def pruner(self) -> ModelPruner:
        return self.evaluator.pruner

    @property
    def method(self) -> ScoringMethod:
        return self.config.space.method

    def allocation_file(self, genome: np.ndarray, **search: Any) -> AllocationFile:
        """``genome`` as a ``sieve.allocation/v1`` file that reproduces its masks anywhere."""
        config, ws = self.config, self.workspace
        return AllocationFile.build(
            self.space.allocation(genome),
            model=ws.model_id, weights_hash=ws.weights_hash, dtype=ws.dtype, method=self.method.describe(),
            lowrank=config.space.lowrank.model_dump() if config.space.lowrank else None,
            calibration=config.calibration.model_dump(), task=config.task, general=config.general,
            split=config.split().model_dump(), workdir=config.workdir, stats=self.statistics.fingerprints,
            stats_hessian=any(s.has_hessian for s in self.statistics.by_source.values()),
            space=config.space.name, budget=config.budget, fitness=config.fitness.name,
            config_digest=digest(config.identity()), achieved_sparsity=self.space.cost(genome) / self.space.total,
            **search,
        )


def search_statistics(config: SearchConfig, ws: Workspace, space: SearchSpace,
                      store: StatsStore | None = None) -> Statistics:
    """The calibration statistics a search over ``space`` reads: every source of its scoring method
    and low-rank primitive, with ``XᵀX`` when it factorises."""
    return ensure_stats(
        ws.model, ws.tokenizer, space.matrices, config.space.sources, weights_hash=ws.weights_hash,
        cfg=config.calibration, general=ws.corpus, task_texts=ws.task.calibration_texts(),
        hessian=config.space.lowrank is not None, store=store,
    )


def prepare(
    config: SearchConfig,
    store: StatsStore | None,
    *,
    workspace: Workspace | None = None,
    statistics: Statistics | None = None,
    extra_seeds: Sequence[dict[str, float]] | None = None,
    expected_weights: str | None = None,
) -> Prepared:
    """Everything a search needs; ``workspace`` / ``statistics`` are reused when given (and the
    statistics are then copied into ``store``). ``expected_weights``: refuse a model whose weights
    hash differs (a resume), before any statistics are computed or written."""
    if config.budget is None:
        raise SieveError("a search needs a budget")
    ws = workspace or config.open_workspace()
    if expected_weights and ws.weights_hash != expected_weights:
        raise SieveError(f"the model's weights changed since the run started (weights hash {expected_weights} then, "
                         f"{ws.weights_hash} now); start a new run")
    space = SearchSpace(config.space, ws.matrices)
    window = space.budget_window(config.budget)
    method = config.space.method
    if statistics is None:
        statistics = search_statistics(config, ws, space, store)
    elif store is not None:
        statistics.save_to(store)
    lowrank_only = config.space.mask is None
    multiple = config.space.lowrank.rank_multiple if config.space.lowrank is not None else 1
    uniform = (Allocation.uniform_rank(space.matrices, config.budget, multiple) if lowrank_only
               else Allocation.uniform(space.matrices, config.budget) if not space.pattern.structured
               else Allocation({}, space.pattern))
    owl = owl_allocation(space.matrices, method, statistics.per_matrix, config.budget)
    uniform_rank = (Allocation.uniform_rank(space.matrices, config.budget, multiple)
                    if config.space.lowrank is not None and not lowrank_only else None)
    rng = np.random.default_rng(config.seed)
    costs = [g.costs for g in space.genes]
    starts = [uniform.removed_fractions(space.matrices) if lowrank_only else uniform.sparsity, owl.sparsity,
              *(extra_seeds or [])]
    if uniform_rank is not None:
        starts.insert(2, uniform_rank.removed_fractions(space.matrices))
    seeds = [repair_budget(space.nearest_genome(a), costs, space.lower, space.upper, window, rng) for a in starts]
    evaluator = build_evaluator(config, ws, space, statistics, lanes=config.lanes if config.in_process else 1)
    return Prepared(ws, space, window, uniform, owl, uniform_rank, seeds, evaluator, statistics, config)


BackendFactory = Callable[[Prepared, RunDir], EvaluationBackend]


def default_backend(prepared: Prepared, run: RunDir) -> EvaluationBackend:
    """In-process unless ``--workers N`` or ``--ray-address`` asks for Ray actors."""
    config = prepared.config
    if config.in_process:
        return InProcessBackend(prepared.evaluator)
    from sieve.search.ray_backend import RayBackend

    return RayBackend(config, prepared.statistics, run)


class SearchRun:
    """A search in its run directory: a new one (``config`` given) or a resume (``overrides`` of the saved config)."""

    def __init__(self, run: RunDir, config: SearchConfig | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.run, self.new, self.overrides = run, config is not None, overrides or {}
        self.config = config if config is not None else run.resumed_config(self.overrides)
        self._preflight()  # every cheap check now, before a directory is created or anything slow loads

    def _preflight(self) -> Checkpoint | None:
        """Checks that need nothing loaded: the device, the model and task specs, the Ray address,
        and for a resume the checkpoint (validated, written by this configuration)."""
        config, run = self.config, self.run
        resolve_device(config.device)
        resolve_model_path(config.model)
        resolve_task(config.task)
        if not config.in_process:
            from sieve.search.ray_backend import check_address

            check_address(config.ray_address or "auto")
        if self.new:
            return None
        ckpt = run.checkpoint()
        if ckpt is None and run.history():
            raise SieveError(f"{run.path} has history.jsonl but no checkpoint (was checkpoint/state.json deleted?); "
                             "start a new run")
        identity = config.identity()
        if ckpt is not None and ckpt.identity != digest(identity):
            changed = differences(ckpt.config_identity, identity) or ["the checkpoint records no configuration"]
            raise SieveError(f"the checkpoint in {run.path} was written by another configuration "
                             f"({'; '.join(changed)}); was config.yaml edited?")
        return ckpt

    def execute(
        self,
        *,
        backend_factory: BackendFactory = default_backend,
        on_generation: Callable[[GenerationRecord], None] | None = None,
        report: bool = True,
        extra_seeds: Sequence[dict[str, float]] | None = None,
        workspace: Workspace | None = None,
        statistics: Statistics | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) to ``config.generations``; ``extra_seeds`` (per-matrix sparsity maps)
        join uniform and OWL in the initial population, e.g. a warm start from another budget."""
        with self.run.lock():  # the checks again, now that no other process can change the run
            if self.new:
                self.config = self.run.create(self.config)
            else:
                self.config = self.run.resumed_config(self.overrides)
            ckpt = self._preflight()
            return self._execute(ckpt, backend_factory, on_generation, report, extra_seeds, workspace, statistics)

    def _execute(self, ckpt, backend_factory, on_generation, report, extra_seeds, workspace, statistics) -> dict[str, Any]:
        config, run = self.config, self.run
        identity = config.identity()
        prepared = prepare(config, run.stats, workspace=workspace, statistics=statistics, extra_seeds=extra_seeds,
                           expected_weights=ckpt.weights_hash if ckpt is not None else None)
        if not self.new:
            run.write_config(config)  # generations / workers may have changed; identity did not
        space = prepared.space
        backend = backend_factory(prepared, run)

        def save(checkpoint, record: GenerationRecord) -> None:
            genome = np.array(record.best_genome)
            prepared.allocation_file(genome, fitness_value=record.best, generation=record.generation).write(
                run.best_allocation_path)
            run.append_history({**asdict(record), "budget": config.budget,
                                "achieved_sparsity": space.cost(genome) / space.total})
            checkpoint.save(run.checkpoint_path)

        search = Search(
            space, prepared.window, prepared.seeds, backend, prepared.evaluator.plan,
            population=config.population, offspring=config.offspring, seed=config.seed, identity=identity,
            weights_hash=prepared.workspace.weights_hash, save=save, on_generation=on_generation,
        )
        try:
            if ckpt is not None:
                run.truncate_history(ckpt.generation)
                search.restore(ckpt)
                log.info("resumed %s at generation %d", run.path, ckpt.generation)
            search.run(config.generations)
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
            "stats_seconds": prepared.statistics.seconds,
            "timings": timings,
            "uniform_fitness": _cached_full(search, prepared.seeds[0]),
            "owl_fitness": _cached_full(search, prepared.seeds[1]),
            "unrouted_experts": sorted(
                m.name for m in space.matrices if m.expert is not None
                and any(s.n_tokens == 0 for s in (prepared.statistics.per_matrix[m.name].general,
                                                  prepared.statistics.per_matrix[m.name].task) if s is not None)),
        }
        if report:
            outcome["table"] = final_table(prepared, best)
            outcome["per_type"] = per_type_table(space.allocation(best), space)
            outcome["per_module"] = per_module(space.allocation(best), space)
        prepared.pruner.release()  # the model's own modules and dense weights again
        run.write_results(outcome)
        return outcome


def _cached_full(search: Search, genome: np.ndarray) -> float | None:
    entry = search.cache.get(cache_key(genome, search.plan.final))
    return entry[0] if entry else None


def final_table(prepared: Prepared, best: np.ndarray) -> list[dict[str, Any]]:
    """Dense vs uniform vs OWL vs best-found on the held-out test split and general text; ``reduction``
    is the fraction of the space's parameters really removed (factorisation), ``sparsity`` the zeros."""
    ws, pruner, space, spec = prepared.workspace, prepared.pruner, prepared.space, prepared.config.space
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, prepared.config.evaluation)
    method = prepared.method.name
    uniform_label = f"uniform-lowrank-{spec.lowrank.covariance}" if spec.mask is None else f"uniform-{method}"
    candidates = [("dense", None), (uniform_label, prepared.uniform), (f"owl-{method}", prepared.owl)]
    if prepared.uniform_rank is not None:
        candidates.append((f"uniform-lowrank-{spec.lowrank.covariance}", prepared.uniform_rank))
    candidates.append(("sieve-search", space.allocation(best)))
    rows = []
    for label, allocation in candidates:
        if allocation is None:
            pruner.restore()
        else:
            pruner.apply(allocation)
        reduction = allocation.reduction(space.matrices) if allocation is not None else 0.0
        rows.append({"method": label, **probe.measure(ws.model, space.matrices).as_dict(), "reduction": reduction})
    pruner.restore()
    return rows


def per_type_table(allocation: Allocation, space: SearchSpace) -> dict[str, dict[str, float]]:
    """Per block × matrix type, the fraction of parameters given up (zeros or factors): the compact view."""
    table: dict[str, dict[str, float]] = {}
    for m in space.matrices:
        table.setdefault(str(m.block), {})[m.kind] = round(allocation.removed(m) / m.numel, 4)
    return table


def per_module(allocation: Allocation, space: SearchSpace) -> dict[str, dict[str, Any]]:
    """Per matrix: the fraction of its parameters given up and, when factorised, its rank."""
    return {m.name: {"removed": allocation.removed(m) / m.numel, "rank": allocation.ranks.get(m.name)}
            for m in space.matrices}
