"""Ray backend on a real local Ray instance (2 CPU actors): same result as in-process, also
when an actor is killed mid-generation."""

import threading
import time

import pytest

from sieve.search.run import SearchRun, default_backend
from sieve.search.rundir import RunDir

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _execute(cfg, run_dir, on_backend=None):
    run = SearchRun(RunDir(run_dir), cfg)
    if on_backend is None:
        return run.execute(report=False)

    def wrapped(prepared, rundir):
        backend = default_backend(prepared, rundir)
        on_backend(backend)
        return backend

    return run.execute(report=False, backend_factory=wrapped)


@pytest.mark.slow
def test_two_ray_actors_match_in_process_even_when_one_dies(ray_instance, search_config, tmp_path):
    local = _execute(search_config(generations=2), tmp_path / "local")
    remote = _execute(search_config(generations=2, workers=2), tmp_path / "ray")
    assert remote["best_genome"] == local["best_genome"]
    assert remote["best_fitness"] == local["best_fitness"]
    assert remote["evaluations"] == local["evaluations"]

    state = {}

    def chaos(backend):
        def kill_when_busy():
            while backend.dispatched < 6:
                time.sleep(0.01)
            ray.kill(backend.actors[0], no_restart=False)
            state["killed"] = True

        threading.Thread(target=kill_when_busy, daemon=True).start()
        state["backend"] = backend

    killed = _execute(search_config(generations=2, workers=2), tmp_path / "killed", chaos)
    assert state.get("killed")
    assert state["backend"].failures >= 1  # the in-flight candidate failed and was re-dispatched
    assert killed["best_genome"] == local["best_genome"]
    assert killed["best_fitness"] == local["best_fitness"]


def test_unreachable_ray_address_is_one_line(search_config, tmp_path):
    from sieve.errors import SieveError
    from sieve.search.ray_backend import check_address

    with pytest.raises(SieveError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_address("127.0.0.1:1")
    with pytest.raises(SieveError, match="HOST:PORT"):
        check_address("nonsense")


@pytest.mark.slow
def test_resume_with_ray_matches_in_process(ray_instance, search_config, tmp_path):
    full = _execute(search_config(generations=2), tmp_path / "full")
    _execute(search_config(generations=1, workers=2), tmp_path / "part")
    resumed = SearchRun(RunDir(tmp_path / "part"), overrides={"generations": 2, "workers": 2}).execute(report=False)
    assert resumed["best_genome"] == full["best_genome"] and resumed["best_fitness"] == full["best_fitness"]
    assert (tmp_path / "part" / "ray_logs").is_dir()


def test_gpu_share_packs_several_actors_per_gpu():
    from sieve.errors import SieveError
    from sieve.search.ray_backend import gpu_share

    assert gpu_share(2, 0) == 0.0  # CPU actors
    assert gpu_share(1, 2) == 1.0 and gpu_share(2, 2) == 1.0
    assert gpu_share(4, 1) == 0.25 and gpu_share(4, 2) == 0.5
    with pytest.raises(SieveError, match="3 workers do not divide evenly over the Ray cluster's 2 GPUs"):
        gpu_share(3, 2)


@pytest.mark.slow
def test_early_stopping_on_ray_matches_in_process(ray_instance, search_config, tmp_path):
    """The held-out selection stage is scored by the actors like every stage: the same stop."""
    cfg = dict(generations=12, selection_examples=8, patience=2)
    local = _execute(search_config(**cfg), tmp_path / "local")
    remote = _execute(search_config(**cfg, workers=2), tmp_path / "ray")
    assert local["early_stopping"]["stopped"]
    assert remote["early_stopping"] == local["early_stopping"]
    assert remote["generations_done"] == local["generations_done"] and remote["best_genome"] == local["best_genome"]
