"""Depth genes end to end: a search removes whole decoder blocks, the model it scores is the model
it exports (a plain transformers folder that loads without sieve, same logits), a resumed depth
search is the uninterrupted one, and the execution plan keeps every block resident and unreplayed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import sieve
from sieve.cli import app
from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.depth import BlockRemoval, remove_blocks
from sieve.prune.allocation import Allocation, AllocationFile
from sieve.prune.pruner import ModelPruner
from sieve.search.execution import ModelFacts, plan_execution
from tests.conftest import tiny_gemma3, tiny_llama

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def deep_model_dir(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-4")
    tiny_llama(vocab=len(tokenizer), layers=4).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def depth_run(search_config, run_search, deep_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "depth"
    run_search(search_config(model=str(deep_model_dir), space="depth", budget=0.5, generations=2), path, report=True)
    return path


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_block_removal_is_reversible_and_equals_removing_for_good(build):
    kwargs = {"layers": 4} if build is tiny_llama else {}
    model = build(**kwargs).eval()
    dense = _logits(model)
    removal = BlockRemoval(model)
    count = removal.count
    for removed in ([1], [0, count - 1], [2], []):
        removal.show(removed)
        reference = build(**kwargs).eval()
        if removed:
            remove_blocks(reference, removed)
        assert torch.equal(_logits(model), _logits(reference))
        assert model.config.num_hidden_layers == count - len(removed)
    assert torch.equal(_logits(model), dense)


def test_pruner_removes_blocks_and_restores_them_bit_for_bit():
    model = tiny_llama(layers=4).eval()
    dense = _logits(model)
    matrices = find_matrices(model)
    pruner = ModelPruner(matrices, None, {}, depth=BlockRemoval(model))
    pruner.apply(Allocation({}, removed_blocks=frozenset({1, 2})))
    reference = tiny_llama(layers=4).eval()
    remove_blocks(reference, [1, 2])
    assert torch.equal(_logits(model), _logits(reference))
    pruner.restore()
    assert torch.equal(_logits(model), dense) and len(model.model.layers) == 4
    with pytest.raises(SieveError, match="built without the model's block list"):
        ModelPruner(matrices, None, {}).apply(Allocation({}, removed_blocks=frozenset({1})))


def test_depth_search_removes_whole_blocks_and_exports_a_plain_folder(depth_run, deep_model_dir, tmp_path):
    file = AllocationFile.read(depth_run / "best_allocation.json")
    assert len(file.removed_blocks) == 2 and not file.module_ranks and set(file.modules.values()) <= {0.0}
    results = json.loads((depth_run / "results.json").read_text())
    assert results["achieved_sparsity"] == 0.5
    seeds = results["baseline_fitness"]  # every depth baseline seeds the search, which keeps the best of them
    assert set(seeds) == {"shortgpt-general", "shortgpt-task", "angular-general", "greedy-task"}
    assert results["best_fitness"] <= min(seeds.values())
    assert {row["method"] for row in results["table"]} >= {"dense", *seeds, "sieve-search"}
    assert file.stats == {} and file.method is None  # nothing is scored: no statistics collected or stored
    assert not (depth_run / "stats").exists() or not any((depth_run / "stats").iterdir())
    out = tmp_path / "hf"
    result = CliRunner().invoke(app, ["export", str(depth_run), "--to", "hf", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "sieve_lowrank" not in config

    reference = AutoModelForCausalLM.from_pretrained(deep_model_dir).eval()
    remove_blocks(reference, file.removed_blocks)
    torch.save(IDS, tmp_path / "ids.pt")
    script = ("import sys, torch; sys.modules['sieve'] = None\n"  # plain transformers: importing sieve would fail
              "from transformers import AutoModelForCausalLM\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
              f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
              "with torch.no_grad():\n"
              f"    torch.save(m(input_ids=ids, use_cache=False).logits, {str(tmp_path / 'logits.pt')!r})\n"
              "print(sum(p.numel() for p in m.parameters()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert torch.equal(torch.load(tmp_path / "logits.pt"), _logits(reference))
    dense = AutoModelForCausalLM.from_pretrained(deep_model_dir)
    per_block = sum(p.numel() for p in dense.model.layers[0].parameters())
    assert int(done.stdout) == sum(p.numel() for p in dense.parameters()) - 2 * per_block
    prune_json = json.loads((out / "prune.json").read_text())
    assert prune_json["removed_blocks"] == sorted(file.removed_blocks) and prune_json["reduction"] == 0.5


def test_a_population_smaller_than_the_baselines_still_scores_every_one(search_config, run_search, deep_model_dir,
                                                                       tmp_path):
    """Four depth baselines, a population of two: every baseline is scored in the initial population
    and the search's best is at least the best of them (the greedy choice, listed last, included)."""
    out = run_search(search_config(model=str(deep_model_dir), space="depth", budget=0.5, generations=1, population=2,
                                   offspring=2), tmp_path / "run", report=False)
    seeds = out["baseline_fitness"]
    assert len(seeds) == 4 and None not in seeds.values()
    assert out["best_fitness"] <= min(seeds.values())


def test_depth_search_resumes_to_the_uninterrupted_result(search_config, run_search, deep_model_dir, tmp_path):
    cfg = search_config(model=str(deep_model_dir), space="depth", budget=0.25, generations=3)
    full = run_search(cfg, tmp_path / "full", report=False)
    run_search(search_config(model=str(deep_model_dir), space="depth", budget=0.25, generations=1), tmp_path / "part",
               report=False)
    resumed = run_search(None, tmp_path / "part", overrides={"generations": 3}, report=False)
    assert resumed["best_genome"] == full["best_genome"] and resumed["best_fitness"] == full["best_fitness"]
    a, b = (json.loads((tmp_path / r / "checkpoint" / "state.json").read_text()) for r in ("full", "part"))
    assert a["pop_x"] == b["pop_x"] and a["pop_f"] == b["pop_f"] and a["cache"] == b["cache"]


def test_deploy_export_loads_with_factors_and_fewer_blocks(search_config, run_search, deep_model_dir, tmp_path):
    run = tmp_path / "deploy"
    run_search(search_config(model=str(deep_model_dir), space="deploy", budget=0.6, generations=1), run, report=False)
    file = AllocationFile.read(run / "best_allocation.json")
    out = tmp_path / "hf"
    result = CliRunner().invoke(app, ["export", str(run), "--to", "hf", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    small = sieve.load_pretrained(out)
    assert len(small.model.layers) == 4 - len(file.removed_blocks)
    from sieve.evaluate.target import open_target, open_workspace_for, realise_target

    target = open_target(run)
    pruned = realise_target(target, open_workspace_for(target, device="cpu"))
    assert torch.allclose(_logits(small), _logits(pruned.ws.model), atol=1e-5)
    assert json.loads((out / "prune.json").read_text())["reduction"] == pytest.approx(file.allocation.reduction(
        find_matrices(AutoModelForCausalLM.from_pretrained(deep_model_dir))))


def test_plan_keeps_depth_candidates_eager_and_resident(search_config, deep_model_dir):
    cfg = search_config(model=str(deep_model_dir), space="depth", batch_candidates=8, lanes=2)
    plan = plan_execution(cfg, ModelFacts(device="cuda", free_bytes=10**12, matrix_bytes=10**6, weight_bytes=10**6))
    assert plan.strategy == "sequential" and not plan.cuda_graphs and plan.candidates_per_forward == 1
    assert any("removes decoder blocks" in note for note in plan.notes)
    with pytest.raises(SieveError, match="--batch-candidates 8: the space removes decoder blocks"):
        plan_execution(cfg, ModelFacts(device="cuda", free_bytes=10**12, matrix_bytes=10**6, weight_bytes=10**6),
                       demanded={"batch_candidates"})
    with pytest.raises(SieveError, match="every decoder block must be resident"):
        plan_execution(cfg, ModelFacts(device="cuda", streamed=True))


def test_deploy_space_under_tolerance_finds_a_frontier_of_real_reductions(search_config, deep_model_dir, tmp_path):
    """``--tolerance`` with the deploy space: every probe is a deploy search (blocks removed and/or
    factors, no zeros), warm-started like any other, and its reduction is real."""
    from sieve.search.pareto import run_pareto
    from sieve.search.rundir import RunDir

    cfg = search_config(model=str(deep_model_dir), space="deploy", tolerance=0.99, budget=None, generations=1)
    result = run_pareto(cfg, RunDir(tmp_path / "pareto"), steps=2)
    assert [p["feasible"] for p in result["frontier"]] == [True, True]
    assert result["largest_budget"] == max(p["budget"] for p in result["frontier"])
    for p in result["frontier"]:
        file = RunDir(tmp_path / "pareto").probe(p["budget"]).best_allocation()
        alloc = file.allocation
        assert (alloc.removed_blocks or alloc.ranks) and not any(alloc.sparsity.values())
        matrices = find_matrices(AutoModelForCausalLM.from_pretrained(deep_model_dir))
        assert alloc.reduction(matrices) <= p["budget"] + 1e-9
