"""Run a search in its run directory: prepare once, loop generations, write results.

:func:`prepare` builds everything a search needs from its config — workspace, space, statistics,
the labelled baselines that seed it (:mod:`~sieve.search.seeds`), the candidate evaluator — and
takes an already-open workspace and already computed statistics, so Pareto probes, benchmarks and
Ray actors reuse them instead of reloading.
:class:`SearchRun` is the stateful shell: it holds the run directory's lock for its lifetime, checks
a resume before writing anything (config identity and input digests in
:meth:`~sieve.search.rundir.RunDir.resumed_config`, the model's weights hash here), and writes the
checkpoint, history, best allocation and results through :class:`~sieve.search.rundir.RunDir`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sieve.config import differences, digest
from sieve.data.task_spec import resolve_task
from sieve.errors import SieveError
from sieve.metrics.quality import QualityProbe
from sieve.models.loading import resolve_model_path
from sieve.prune.allocation import Allocation, AllocationFile
from sieve.prune.pruner import ModelPruner
from sieve.scores.base import ScoringMethod
from sieve.search.checkpoint import Checkpoint, cache_key
from sieve.search.config import SearchConfig
from sieve.search.curve import generation_curve
from sieve.search.evaluator import CandidateEvaluator, EvaluationBackend, InProcessBackend, build_evaluator
from sieve.search.execution import ExecutionPlan, ModelFacts, plan_execution
from sieve.search.loop import GenerationRecord, Search
from sieve.search.phases import Phases
from sieve.search.rundir import RunDir
from sieve.search.seeds import GREEDY_LABELS, baselines, greedy_baseline, lost_energy, removal_map, seed_genomes
from sieve.search.selection import select_on_heldout
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
    baselines: dict[str, Allocation]  # by label, in seeding order (:mod:`sieve.search.seeds`)
    seeds: list[np.ndarray]  # the baselines' genomes first, then any extra seeds
    evaluator: CandidateEvaluator
    statistics: Statistics
    config: SearchConfig

    @property
    def pruner(self) -> ModelPruner:
        return self.evaluator.pruner

    @property
    def method(self) -> ScoringMethod | None:
        return self.config.space.scoring

    def allocation_file(self, genome: np.ndarray, **search: Any) -> AllocationFile:
        """``genome`` as a ``sieve.allocation/v1`` file that reproduces its masks anywhere."""
        config, ws = self.config, self.workspace
        return AllocationFile.build(
            self.space.allocation(genome),
            model=ws.model_id, weights_hash=ws.weights_hash, model_digests=ws.model_identity.digests, dtype=ws.dtype,
            method=self.method.describe() if self.method is not None else None,
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


@dataclass
class Checked:
    """A search's inputs once everything bad input can fail has been checked: the open workspace,
    the space on its matrices, the budget's feasible window and the execution plan."""

    workspace: Workspace
    space: SearchSpace
    window: tuple[int, int]
    execution: ExecutionPlan


def check_search(config: SearchConfig, workspace: Workspace | None = None, *, resumed: Checkpoint | None = None,
                 demanded: Collection[str] = (), recorded: ExecutionPlan | None = None) -> Checked:
    """Open (or reuse) the workspace and check what needs it: the model is the resumed run's
    (weights, config, tokenizer), the space matches its matrices, the budget is reachable, and the
    execution plan applies — and for a resume reproduces the ``recorded`` one's result-shaping settings."""
    if config.budget is None:
        raise SieveError("a search needs a budget")
    ws = (workspace or config.open_workspace()).pin_identity()
    if resumed is not None:
        resumed.check_model(ws.weights_hash, ws.model_identity)
    space = SearchSpace(config.space, ws.matrices)
    window = space.budget_window(config.budget)
    execution = plan_execution(config, ModelFacts.of(ws, space.matrices, config.max_gpu_memory), demanded)
    if recorded is not None and (changed := execution.mismatch(recorded)):
        raise SieveError(f"this run cannot be resumed here with the same results: {'; '.join(changed)} "
                         "(what fits in this device's memory differs from where it started)")
    return Checked(ws, space, window, execution)


def prepare(
    config: SearchConfig,
    store: StatsStore | None,
    *,
    workspace: Workspace | None = None,
    statistics: Statistics | None = None,
    extra_seeds: Sequence[dict[str, float]] | None = None,
    resumed: Checkpoint | None = None,
    checked: Checked | None = None,
    phases: Phases | None = None,
) -> Prepared:
    """Everything a search needs; ``workspace`` / ``statistics`` are reused when given (restricted
    to the sources the space reads, and then linked or copied into ``store``). ``resumed``: the checkpoint of a resume, whose model
    the loaded one must be; ``checked``: :func:`check_search`'s answer where the caller has it."""
    phases = phases or Phases()
    if checked is None:
        with phases("model_load"):
            checked = check_search(config, workspace, resumed=resumed)
    ws, space, window = checked.workspace, checked.space, checked.window
    checked.execution.log_notes()
    with phases("statistics"):
        if statistics is None:
            statistics = search_statistics(config, ws, space, store)
        else:
            statistics = statistics.only(config.space.sources, space.matrices)
            if store is not None:
                statistics.save_to(store)
    with phases("setup"):
        evaluator = build_evaluator(config, ws, space, statistics, checked.execution)
        found = baselines(config, ws, space, window, statistics)
        if config.space.depth:
            label = f"greedy-{GREEDY_LABELS.get(config.fitness.name, config.fitness.name)}"
            found[label] = greedy_baseline(evaluator, space, window, label)
        starts = [removal_map(a, space) for a in found.values()] + list(extra_seeds or [])
        lost = lost_energy(space, evaluator.pruner) if space.removal_genes else None
        seeds = seed_genomes(starts, space, window, config.seed, lost)
    return Prepared(ws, space, window, found, seeds, evaluator, statistics, config)


BackendFactory = Callable[[Prepared, RunDir], EvaluationBackend]


def default_backend(prepared: Prepared, run: RunDir) -> EvaluationBackend:
    """In-process unless ``--workers N`` or ``--ray-address`` asks for Ray actors."""
    config = prepared.config
    if prepared.evaluator.execution.workers == 0:
        return InProcessBackend(prepared.evaluator)
    from sieve.search.ray_backend import RayBackend

    return RayBackend(config, prepared.statistics, run)


class SearchRun:
    """A search in its run directory: a new one (``config`` given) or a resume (``overrides`` of the
    saved config). ``demanded``: the config fields the user typed (flags), which the execution plan
    must honour or refuse; every other setting is a preference it may replace (:mod:`sieve.search.execution`)."""

    def __init__(self, run: RunDir, config: SearchConfig | None = None, overrides: dict[str, Any] | None = None,
                 demanded: Collection[str] = ()) -> None:
        self.run, self.new, self.overrides = run, config is not None, overrides or {}
        self.config = config if config is not None else run.resumed_config(self.overrides)
        self.recorded = None if self.new else run.execution()
        self.demanded = frozenset(demanded) | frozenset(self.overrides) | frozenset(
            self.recorded.demanded if self.recorded is not None else ())
        self.phases = Phases()
        self._preflight()  # every cheap check now, before a directory is created or anything slow loads
        if self.new:
            run.check_creatable(self.config)  # writable, and holding nothing a new run would lose or adopt
        else:
            run.check_not_in_use()

    def _preflight(self) -> Checkpoint | None:
        """Checks that need nothing loaded: the device, the model and task specs, the Ray address,
        the execution plan's demands, and for a resume the checkpoint (validated, written by this configuration)."""
        config, run = self.config, self.run
        device = resolve_device(config.device)
        plan_execution(config, ModelFacts.before_loading(device), self.demanded)
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
        join uniform and OWL in the initial population, e.g. a warm start from another budget.

        A new run's directory is created only once everything bad input can fail has been checked
        (the workspace is open, the space, budget and execution plan are checked), so a refused
        search leaves nothing. A failure once this search has made the directory (or any crash in
        a resumed one) marks the run failed with its reason; the same command then starts it afresh."""
        try:
            checked = None
            if self.new:
                with self.phases("model_load"):
                    checked = check_search(self.config, workspace, demanded=self.demanded)
            with self.run.lock():  # the checks again, now that no other process can change the run
                if self.new:
                    self.config = self.run.create(self.config)
                else:
                    self.config = self.run.resumed_config(self.overrides)
                ckpt = self._preflight()
                if checked is None:
                    with self.phases("model_load"):
                        checked = check_search(self.config, workspace, resumed=ckpt, demanded=self.demanded,
                                               recorded=self.recorded)
                self.run.write_execution(checked.execution)
                return self._execute(ckpt, checked, backend_factory, on_generation, report, extra_seeds, statistics)
        except SieveError as exc:  # a refused resume leaves the run as it was
            if self.run.created:
                self.run.mark_failed(exc)
            raise
        except Exception as exc:
            if self.run.created or not self.new:
                self.run.mark_failed(exc)
            raise

    def _execute(self, ckpt, checked, backend_factory, on_generation, report, extra_seeds, statistics) -> dict[str, Any]:
        config, run, phases = self.config, self.run, self.phases
        identity = config.identity()
        prepared = prepare(config, run.stats, statistics=statistics, extra_seeds=extra_seeds, resumed=ckpt,
                           checked=checked, phases=phases)
        if not self.new:
            run.write_config(config)  # generations / workers may have changed; identity did not
        space = prepared.space
        with phases("setup"):
            backend = backend_factory(prepared, run)

        def save(checkpoint, record: GenerationRecord) -> None:
            genome = np.array(record.best_genome)
            prepared.allocation_file(genome, fitness_value=record.best, generation=record.generation).write(
                run.best_allocation_path)
            line = {k: v for k, v in asdict(record).items() if k != "selection" or v is not None}
            run.append_history({**line, "budget": config.budget, "achieved_sparsity": space.cost(genome) / space.total})
            checkpoint.save(run.checkpoint_path)

        search = Search(
            space, prepared.window, prepared.seeds, backend, prepared.evaluator.plan,
            population=config.population, offspring=config.offspring, seed=config.seed, identity=identity,
            weights_hash=prepared.workspace.weights_hash, save=save, on_generation=on_generation,
            model=prepared.workspace.model_identity, patience=config.patience,
        )
        try:
            if ckpt is not None:
                run.truncate_history(ckpt.generation)
                search.restore(ckpt)
                log.info("resumed %s at generation %d", run.path, ckpt.generation)
            loop_start = time.perf_counter()
            search.run(config.generations)
            phases.add("loop", time.perf_counter() - loop_start)
        finally:
            timings = backend.timings().as_dict()
            backend.close()
        best, best_f = search.best()
        selection = None
        if config.selection_examples:
            with phases("selection"):
                ws = prepared.workspace
                best, selection = select_on_heldout(run.history(), ws.task, ws.tokenizer, config.evaluation, space,
                                                    prepared.pruner, ws.model)
                best_f = selection["chosen"]["validation"]
                prepared.allocation_file(best, fitness_value=best_f, generation=selection["chosen_generation"]).write(
                    run.best_allocation_path)
        outcome: dict[str, Any] = {
            "best_fitness": best_f,
            "best_genome": best.tolist(),
            "achieved_sparsity": space.cost(best) / space.total,
            "evaluations": search.evaluations,
            "generations_done": search.generation,
            "exhausted": search.exhausted,
            **({"early_stopping": {"patience": config.patience,
                                   "stopped": search.stopped and search.generation < config.generations,
                                   "best_generation": search.selection_best[1],
                                   "best_selection": search.selection_best[0]}} if config.patience else {}),
            "tokens": search.tokens,
            "search_seconds": search.seconds,
            "stats_seconds": prepared.statistics.seconds,
            "timings": timings,
            "execution": prepared.evaluator.execution.model_dump(mode="json"),
            "baseline_fitness": {label: _cached_full(search, genome)
                                 for label, genome in zip(prepared.baselines, prepared.seeds)},
            "unrouted_experts": sorted(
                m.name for m in space.matrices if m.expert is not None
                and any(s.n_tokens == 0 for s in (prepared.statistics.per_matrix[m.name].general,
                                                  prepared.statistics.per_matrix[m.name].task) if s is not None)),
        }
        if selection is not None:
            outcome["selection"] = selection
        if not config.space.depth:  # the first two seeds of zeros and factors: uniform and OWL
            outcome["uniform_fitness"], outcome["owl_fitness"] = list(outcome["baseline_fitness"].values())[:2]
        if report:
            with phases("final_evaluation"):
                outcome["table"] = final_table(prepared, best)
                outcome["per_type"] = per_type_table(space.allocation(best), space)
                outcome["per_module"] = per_module(space.allocation(best), space)
            if config.evaluation.curve:
                with phases("curve"):
                    ws = prepared.workspace
                    probe = QualityProbe(ws.tokenizer, ws.task, None, config.evaluation)
                    outcome["curve"] = generation_curve(run.history(), space, prepared.pruner, probe, ws.model)
        prepared.pruner.release()  # the model's own modules and dense weights again
        write_start = time.perf_counter()
        outcome["phases"] = phases.as_dict()
        run.write_results(outcome)
        phases.add("write_results", time.perf_counter() - write_start)
        outcome["phases"] = phases.as_dict()
        return outcome


def _cached_full(search: Search, genome: np.ndarray) -> float | None:
    entry = search.cache.get(cache_key(genome, search.plan.final))
    return entry[0] if entry else None


def final_table(prepared: Prepared, best: np.ndarray) -> list[dict[str, Any]]:
    """Dense vs uniform vs OWL vs best-found on the held-out test split and general text; ``reduction``
    is the fraction of the space's parameters really removed (factorisation), ``sparsity`` the zeros."""
    ws, pruner, space = prepared.workspace, prepared.pruner, prepared.space
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, prepared.config.evaluation)
    candidates = [("dense", None), *prepared.baselines.items(), ("sieve-search", space.allocation(best))]
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
