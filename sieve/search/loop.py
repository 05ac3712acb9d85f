"""The search loop: pymoo's GA driven by ask/tell, with multi-fidelity selection and checkpoints.

Per generation: ``ask`` the GA for offspring (crossover → budget-neutral mutation → budget repair),
score all of them on the first validation stage, promote the best ``promote[0]`` to the next stage, and
so on until the survivors are scored on the full validation set; ``tell`` the GA the full-fidelity
fitness of the survivors (eliminated candidates get ``ELIMINATED + their last value``, so they never
displace a full-fidelity member). The initial population (uniform, OWL and perturbations) is scored
on the full set; survival is elitist, so the best allocation can never be worse on the fitness than
uniform or OWL. A fitness cache keyed by ``(genome, stage)`` means no genome is scored twice at one
fidelity, also across a resume.

**Early stopping** (``patience``): after every generation its best is also scored on the held-out
selection documents (the plan's selection stage, which no candidate is chosen by), and the loop stops
once ``patience`` generations have passed since the lowest value there (ties: the earliest). The
decision reads only the recorded values, so a resumed run stops where the uninterrupted one did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.evaluator import Evaluator
from pymoo.core.population import Population
from pymoo.core.termination import NoTermination
from pymoo.problems.static import StaticProblem

from sieve.config import digest
from sieve.errors import SieveError
from sieve.models.identity import ModelIdentity
from sieve.search.checkpoint import Checkpoint, cache_key
from sieve.search.evaluator import EvaluationBackend
from sieve.search.operators import BudgetRepair, LevelCrossover, LevelProblem, LevelSwitchMutation, SeededSampling
from sieve.search.space import SearchSpace
from sieve.search.stages import StagePlan

log = logging.getLogger(__name__)

ELIMINATED = 1e6


@dataclass
class GenerationRecord:
    generation: int
    best: float
    median: float
    evaluations: int
    tokens: int
    seconds: float
    evals_per_s: float
    best_genome: list[int]
    #: the best's fitness on the held-out selection documents (early stopping), else ``None``
    selection: float | None = None


def build_ga(space: SearchSpace, window: tuple[int, int], seeds: Sequence[np.ndarray], population: int, offspring: int) -> GA:
    return GA(
        pop_size=population,
        n_offsprings=offspring,
        sampling=SeededSampling(space, seeds),
        crossover=LevelCrossover(),
        mutation=LevelSwitchMutation(space),
        repair=BudgetRepair(space, window),
        eliminate_duplicates=True,
    )


class Search:
    """Runs (or resumes) a GA search; ``on_generation`` sees one record per finished generation."""

    def __init__(
        self,
        space: SearchSpace,
        window: tuple[int, int],
        seeds: Sequence[np.ndarray],
        backend: EvaluationBackend,
        plan: StagePlan,
        *,
        population: int,
        offspring: int,
        seed: int,
        identity: dict[str, Any],
        weights_hash: str,
        save: Callable[[Checkpoint, GenerationRecord], None],
        on_generation: Callable[[GenerationRecord], None] | None = None,
        model: ModelIdentity | None = None,
        patience: int = 0,
    ) -> None:
        self.space, self.window, self.backend, self.plan = space, window, backend, plan
        self.seed, self.identity, self.weights_hash, self.save = seed, identity, weights_hash, save
        self.model = model
        self.identity_digest = digest(identity)
        self.on_generation = on_generation
        self.problem = LevelProblem(space)
        self.algorithm = build_ga(space, window, seeds, population, offspring)
        self.algorithm.setup(self.problem, termination=NoTermination(), seed=seed)
        self.cache: dict[str, list[float]] = {}
        self.generation = -1
        self.exhausted = False
        self.evaluations = 0
        self.tokens = 0
        self.seconds = 0.0
        if patience and plan.selection_stage is None:
            raise SieveError("early stopping needs held-out selection documents in the stage plan")
        self.patience = patience
        #: the lowest held-out value so far and the generation of it (early stopping)
        self.selection_best: tuple[float, int] | None = None

    def restore(self, ckpt: Checkpoint) -> None:
        X = np.array(ckpt.pop_x, dtype=np.int64).reshape(len(ckpt.pop_x), -1)
        if X.shape[1] != self.space.n_genes or (X < self.space.lower).any() or (X > self.space.upper).any():
            raise SieveError(f"the checkpoint's population does not fit the search space ({X.shape[1]} genes, "
                             f"{self.space.n_genes} expected, or levels out of range)")
        algo = self.algorithm
        algo._initialize()
        pop = Population.new(X=X)
        Evaluator().eval(StaticProblem(self.problem, F=np.array(ckpt.pop_f).reshape(-1, 1)), pop)
        algo.pop = pop
        algo.is_initialized = True
        algo.n_iter = ckpt.generation + 2
        algo._set_optimum()
        try:
            algo.random_state.bit_generator.state = ckpt.rng_state
        except (TypeError, ValueError, KeyError) as exc:
            raise SieveError(f"the checkpoint's random generator state is damaged ({exc})") from None
        self.cache = {k: list(v) for k, v in ckpt.cache.items()}
        self.generation = ckpt.generation
        self.evaluations, self.tokens, self.seconds = ckpt.evaluations, ckpt.tokens, ckpt.seconds
        self.selection_best = tuple(ckpt.selection_best) if ckpt.selection_best is not None else None

    def _scores(self, genomes: Sequence[np.ndarray], stage: int) -> list[float]:
        keys = [cache_key(g, stage) for g in genomes]
        missing: dict[str, np.ndarray] = {}
        for k, g in zip(keys, genomes):
            if k not in self.cache and k not in missing:
                missing[k] = g
        if missing:
            results = self.backend.evaluate(list(missing.values()), stage)
            for k, r in zip(missing, results):
                self.cache[k] = [r.value, r.tokens]
                self.evaluations += 1
                self.tokens += int(r.tokens)
        return [self.cache[k][0] for k in keys]

    def _multi_fidelity(self, X: np.ndarray) -> np.ndarray:
        F = np.empty(len(X))
        alive = list(range(len(X)))
        for stage in range(self.plan.final + 1):
            values = dict(zip(alive, self._scores([X[i] for i in alive], stage)))
            if stage == self.plan.final:
                for i in alive:
                    F[i] = values[i]
                break
            ranked = sorted(alive, key=lambda i: (values[i], i))
            for i in ranked[self.plan.promote[stage] :]:
                F[i] = ELIMINATED + values[i]
            alive = ranked[: self.plan.promote[stage]]
        return F

    def step(self) -> GenerationRecord | None:
        """One generation; ``None`` (and :attr:`exhausted`) when the space has no new feasible genome."""
        start = time.perf_counter()
        evals_before = self.evaluations
        infills = self.algorithm.ask()
        if infills is None or len(infills) == 0:  # every budget-feasible genome was already proposed
            if not self.exhausted:
                log.warning("every genome within the budget window %s has been proposed by generation %d: the search "
                            "stops there (its best is the best of the space it scored)", self.window, self.generation)
            self.exhausted = True
            return None
        X = infills.get("X").astype(np.int64)
        if self.generation < 0:
            F = np.array(self._scores(list(X), self.plan.final))
        else:
            F = self._multi_fidelity(X)
        Evaluator().eval(StaticProblem(self.problem, F=F.reshape(-1, 1)), infills)
        self.algorithm.tell(infills=infills)
        self.generation += 1
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        pop_f = self.algorithm.pop.get("F")[:, 0]
        pop_x = self.algorithm.pop.get("X").astype(np.int64)
        best = int(np.argmin(pop_f))
        held_out = self._held_out(pop_x[best]) if self.patience else None
        record = GenerationRecord(
            generation=self.generation,
            best=float(pop_f[best]),
            median=float(np.median(pop_f)),
            evaluations=self.evaluations,
            tokens=self.tokens,
            seconds=self.seconds,
            evals_per_s=(self.evaluations - evals_before) / max(elapsed, 1e-9),
            best_genome=[int(v) for v in pop_x[best]],
            selection=held_out,
        )
        ckpt = Checkpoint(
            generation=self.generation,
            pop_x=pop_x.tolist(),
            pop_f=[float(f) for f in pop_f],
            rng_state=_rng_to_json(self.algorithm.random_state.bit_generator.state),
            cache={k: tuple(v) for k, v in self.cache.items()},
            evaluations=self.evaluations,
            tokens=self.tokens,
            seconds=self.seconds,
            identity=self.identity_digest,
            config_identity=self.identity,
            weights_hash=self.weights_hash,
            model=self.model,
            selection_best=self.selection_best,
        )
        self.save(ckpt, record)
        if self.on_generation:
            self.on_generation(record)
        return record

    def _held_out(self, genome: np.ndarray) -> float:
        """``genome``'s fitness on the selection documents; updates the lowest so far."""
        value = self._scores([genome], self.plan.selection_stage)[0]
        if self.selection_best is None or value < self.selection_best[0]:
            self.selection_best = (value, self.generation)
        return value

    @property
    def stopped(self) -> bool:
        """Whether early stopping has ended the search: ``patience`` generations without a lower
        held-out value."""
        return bool(self.patience) and self.selection_best is not None and (
            self.generation - self.selection_best[1] >= self.patience)

    def run(self, generations: int) -> None:
        """Advance until ``generations`` generations after the initial population are done, the
        space is exhausted or early stopping ends it."""
        while self.generation < generations and not self.exhausted and not self.stopped:
            self.step()
        if self.stopped and self.generation < generations:
            log.info("early stopping after generation %d: the held-out best (%.4f) is from generation %d",
                     self.generation, *self.selection_best)

    def best(self) -> tuple[np.ndarray, float]:
        pop_f = self.algorithm.pop.get("F")[:, 0]
        i = int(np.argmin(pop_f))
        return self.algorithm.pop.get("X")[i].astype(np.int64), float(pop_f[i])


def _rng_to_json(state: dict) -> dict:
    """numpy's generator state with numpy integers turned into JSON-able Python ints."""
    return {k: _rng_to_json(v) if isinstance(v, dict) else (int(v) if isinstance(v, np.integer) else v) for k, v in state.items()}
