"""Ray backend: candidates evaluated by evaluator actors on every GPU (or CPU) of a Ray cluster.

Each :class:`EvaluatorActor` builds the same :class:`~sieve.search.evaluator.CandidateEvaluator` as
the in-process backend — model, validation data and dense references loaded once — from the run's
config and the calibration statistics, which travel once through Ray's object store instead of
being recomputed per actor. Candidates are dispatched dynamically (an idle actor takes the next
one, so faster actors take more) and results are returned in the order of the request, keyed by
candidate, so the search sees exactly what the in-process backend would: the final allocation is
the same whatever the number of actors.

Fault tolerance: actors restart (``max_restarts``) after dying (OOM, preemption, ``ray.kill``);
the candidates they had in flight are re-submitted, so the generation completes. A candidate that
fails ``MAX_FAILURES`` times is reported as an error instead of being retried forever.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sieve.config import to_dict, validate
from sieve.errors import SieveError
from sieve.search.config import SearchConfig
from sieve.search.evaluator import build_evaluator
from sieve.search.fitness import Measurement
from sieve.search.rundir import RunDir
from sieve.search.space import SearchSpace
from sieve.search.strategies import Timings
from sieve.stats.calibrate import Statistics

log = logging.getLogger(__name__)

MAX_FAILURES = 3
ACTOR_RESTARTS = 4


class EvaluatorActor:
    """Body of the Ray actor (wrapped with ``ray.remote`` in :func:`_actor_class`)."""

    def __init__(self, config: dict[str, Any], stats: Statistics, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        cfg = validate(SearchConfig, config, "config")
        ws = cfg.open_workspace()
        self.evaluator = build_evaluator(cfg, ws, SearchSpace(cfg.space, ws.matrices), stats)

    def evaluate(self, genome: list[int], stage: int) -> tuple[float, int, dict[str, float]]:
        before = Timings(**vars(self.evaluator.timings))
        result = self.evaluator.evaluate(np.array(genome, dtype=np.int64), stage)
        t = self.evaluator.timings
        return result.value, result.tokens, {
            "apply": t.apply - before.apply, "forward": t.forward - before.forward, "total": t.total - before.total,
            "graphed": t.graphed - before.graphed}

    def ready(self) -> int:
        return os.getpid()


def _actor_class():
    import ray

    return ray.remote(EvaluatorActor)


def check_address(address: str) -> None:
    """Fail fast with one line when ``HOST:PORT`` does not answer (``ray.init`` would retry for minutes)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SieveError(f"--ray-address must be 'auto' or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise SieveError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _connect(config: SearchConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.ray_address:
        check_address(config.ray_address)
    try:
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            import torch

            ray.init(
                num_cpus=max(os.cpu_count() or 1, config.workers),
                num_gpus=torch.cuda.device_count() if config.device != "cpu" else 0,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = config.ray_address or "a local instance"
        raise SieveError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}") from None


def gpu_share(workers: int, gpus: int) -> float:
    """The GPU fraction each of ``workers`` actors reserves: one GPU each, or — more workers than
    GPUs, a whole number per GPU — ``gpus / workers``, so several actors share a GPU. A small model's
    forward is bound by Python and kernel launches, not by the GPU (SmolLM2-135M keeps an H100 busy
    about a fifth of a candidate), so actors sharing one GPU overlap their CPU work."""
    if not gpus:
        return 0.0
    if workers <= gpus:
        return 1.0
    if workers % gpus:
        raise SieveError(f"{workers} workers do not divide evenly over the Ray cluster's {gpus} GPUs: "
                         f"use a multiple of {gpus}")
    return gpus / workers


class RayBackend:
    """Dynamic dispatch of candidates over evaluator actors; results in request order."""

    def __init__(self, config: SearchConfig, stats: Statistics, run: RunDir) -> None:
        import ray

        _connect(config)
        self.run = run
        gpus = int(ray.cluster_resources().get("GPU", 0)) if config.device != "cpu" else 0
        workers = config.workers or max(gpus, 1)
        threads = 1 if gpus else max(1, (os.cpu_count() or 1) // workers)
        options = {"num_gpus": gpu_share(workers, gpus), "num_cpus": 1, "max_restarts": ACTOR_RESTARTS,
                   "max_task_retries": 0}
        stats_ref = ray.put(stats)
        self._stats_ref = stats_ref  # keep the constructor argument alive so restarted actors can rebuild
        actor_cls = _actor_class()
        cfg = to_dict(config)
        self.actors = [actor_cls.options(**options).remote(cfg, stats_ref, threads) for _ in range(workers)]
        ray.get([a.ready.remote() for a in self.actors])
        self._timings = Timings()
        self.dispatched = 0
        self.failures = 0
        log.info("Ray backend: %d actors (%s)", workers, f"{options['num_gpus']:g} GPU each" if gpus else "CPU")

    def evaluate(self, genomes: Sequence[np.ndarray], stage: int) -> list[Measurement]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        pending = deque(range(len(genomes)))
        results: dict[int, Measurement] = {}
        failures: dict[int, int] = {}
        idle = deque(range(len(self.actors)))
        in_flight: dict[Any, tuple[int, int]] = {}
        while len(results) < len(genomes):
            while pending and idle:
                i, a = pending.popleft(), idle.popleft()
                ref = self.actors[a].evaluate.remote([int(v) for v in genomes[i]], stage)
                in_flight[ref] = (i, a)
                self.dispatched += 1
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            i, a = in_flight.pop(ref)
            idle.append(a)
            try:
                value, tokens, t = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                self.failures += 1
                failures[i] = failures.get(i, 0) + 1
                log.warning("candidate %d failed on actor %d (%s); re-dispatching", i, a, type(exc).__name__)
                if failures[i] >= MAX_FAILURES:
                    raise SieveError(
                        f"candidate {i} of stage {stage} failed {failures[i]} times on Ray workers: "
                        f"{str(exc).splitlines()[0]}"
                    ) from None
                pending.append(i)
                continue
            results[i] = Measurement(value, tokens)
            self._timings.add(Timings(t["apply"], t["forward"], t["total"], 1, t["graphed"]))
        return [results[i] for i in range(len(genomes))]

    def timings(self) -> Timings:
        return self._timings

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        _copy_logs(self.run.ray_logs)


def _copy_logs(target: Path) -> None:
    """Keep Ray's session logs with the run (the dashboard stays off)."""
    try:
        import ray

        ctx = ray.get_runtime_context()
        session = Path(ctx.get_temp_dir()) / ctx.get_session_name()
    except Exception:  # noqa: BLE001 - logs are a convenience
        return
    logs = session / "logs"
    if logs.is_dir():
        shutil.copytree(logs, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
