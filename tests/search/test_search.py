import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from sieve.config import to_dict
from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.prune.allocation import AllocationFile
from sieve.search.checkpoint import Checkpoint
from sieve.search.run import SearchRun
from sieve.search.rundir import RunDir
from sieve.search.space import SearchSpace, SpaceSpec


@pytest.fixture
def _run(run_search):
    def run(cfg, run_dir: Path, resume: bool = False):
        if resume:
            return run_search(None, run_dir, overrides={"generations": cfg.generations}, report=False)
        return run_search(cfg, run_dir, report=False)

    return run


def _checkpoint(run_dir: Path) -> Checkpoint:
    return Checkpoint.load(run_dir / "checkpoint" / "state.json")


def _modules(run_dir: Path) -> dict:
    return json.loads((run_dir / "best_allocation.json").read_text())["modules"]


def test_seed_determinism_seeding_and_cache(search_config, tmp_path, _run):
    cfg = search_config()
    a = _run(cfg, tmp_path / "a")
    b = _run(cfg, tmp_path / "b")
    assert a["best_genome"] == b["best_genome"] and a["best_fitness"] == b["best_fitness"]
    assert _modules(tmp_path / "a") == _modules(tmp_path / "b")
    ckpt = _checkpoint(tmp_path / "a")
    assert ckpt.generation == 3
    # every cached (genome, stage) pair was evaluated exactly once
    assert ckpt.evaluations == len(ckpt.cache)
    # uniform and OWL seeds were scored at full fidelity and can't beat the returned best
    assert a["uniform_fitness"] is not None and a["owl_fitness"] is not None
    assert a["best_fitness"] <= min(a["uniform_fitness"], a["owl_fitness"])
    history = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["generation"] for h in history] == [0, 1, 2, 3]
    assert all(h["achieved_sparsity"] == pytest.approx(0.5, abs=0.05) for h in history)
    assert [h["best"] for h in history] == sorted([h["best"] for h in history], reverse=True)
    c = _run(search_config(seed=1), tmp_path / "c")
    assert c["best_genome"] != a["best_genome"] or c["best_fitness"] != a["best_fitness"]


def test_resume_in_process_is_bit_identical(search_config, tmp_path, _run):
    full = _run(search_config(generations=4), tmp_path / "full")
    _run(search_config(generations=1), tmp_path / "part")
    resumed = _run(search_config(generations=4), tmp_path / "part", resume=True)
    assert resumed["best_genome"] == full["best_genome"]
    assert _modules(tmp_path / "part") == _modules(tmp_path / "full")
    a = _checkpoint(tmp_path / "full")
    b = _checkpoint(tmp_path / "part")
    assert a.pop_x == b.pop_x and a.pop_f == b.pop_f and a.cache == b.cache and a.rng_state == b.rng_state


def test_resume_refuses_changed_config(search_config, tmp_path, _run):
    _run(search_config(generations=1), tmp_path / "r")
    with pytest.raises(SieveError, match="budget: run has 0.5, now 0.4; seed: run has 0, now 3"):
        RunDir(tmp_path / "r").resumed_config({"budget": 0.4, "seed": 3})
    with pytest.raises(SieveError, match="holds a run at generation 1; resume with `sieve search --resume"):
        SearchRun(RunDir(tmp_path / "r"), search_config()).execute()
    with pytest.raises(SieveError, match="not a sieve run directory"):
        RunDir.existing(tmp_path / "nothing")


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sieve.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("space", ["per_matrix", "lowrank"])
def test_sigkill_at_random_point_then_resume_matches(space, search_config, tmp_path):
    cfg = search_config(generations=5, space=space, budget=0.5 if space == "per_matrix" else 0.3)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    start = time.perf_counter()
    ref = _cli(["search", "--config", str(config_file), "--run-dir", str(tmp_path / "ref")])
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out.decode()[-2000:]
    duration = time.perf_counter() - start
    rng = random.Random(int(time.time()))
    killed = tmp_path / "killed"
    victim = _cli(["search", "--config", str(config_file), "--run-dir", str(killed)])
    time.sleep(rng.uniform(0.3, 0.9) * duration)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    args = ["search", "--resume", str(killed)] if (killed / "config.yaml").exists() else [
        "search", "--config", str(config_file), "--run-dir", str(killed)]
    resumed = _cli(args)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode()[-2000:]
    assert _modules(killed) == _modules(tmp_path / "ref")
    a = _checkpoint(tmp_path / "ref")
    b = _checkpoint(killed)
    assert a.pop_x == b.pop_x and a.pop_f == b.pop_f


def test_search_runs_on_gpt2_conv1d(search_config, tokenizer, tmp_path, _run):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = _run(search_config(model=str(folder), generations=1), tmp_path / "run")
    assert out["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    modules = _modules(tmp_path / "run")
    assert any(name.endswith("attn.c_attn") for name in modules)


@pytest.mark.parametrize("space", SpaceSpec.builtin_names())
def test_every_shipped_space_searches(space, search_config, tiny_model_dir, tmp_path, _run):
    """Every built-in space searches, and its best allocation keeps the exact budget rule: the
    parameters it removes lie in the space's window ``(R' − Δ, R']`` below the budget."""
    spec = SpaceSpec.load(space)
    budget = 0.3 if spec.pattern.structured else 0.5
    fitness = "general_kl" if space == "evopress" else "task_nll"
    _run(search_config(space=space, budget=budget, generations=1, fitness=fitness, general_fitness_blocks=2), tmp_path / space)
    file = AllocationFile.read(tmp_path / space / "best_allocation.json")
    searched = SearchSpace(spec, find_matrices(AutoModelForCausalLM.from_pretrained(tiny_model_dir)))
    low, high = searched.budget_window(budget)
    assert file.space == space and low < sum(file.allocation.removed(m) for m in searched.matrices) <= high
    if spec.pattern.structured:
        assert set(file.module_patterns.values()) <= {"2:4"}
        assert set(file.modules.values()) <= {0.0, 0.5}
    if spec.mask is None:  # real reduction: factors or removed blocks only, no zeros
        assert file.module_ranks or file.removed_blocks
        assert set(file.modules.values()) <= {0.0}
    if spec.depth and spec.lowrank is None:
        assert len(file.removed_blocks) == 1 and not file.module_ranks
