"""A low-rank search exports a really smaller model: factors on disk, ``sieve.load_pretrained``
gives the same logits, and generate, lm-eval's HFLM and peft LoRA work on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import sieve
from sieve.cli import app
from sieve.models.factorized import FactorizedLinear


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def lowrank_run(search_config, run_search, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "lowrank"
    run_search(search_config(space="lowrank", budget=0.3, generations=1), path, report=True)
    return path


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_factorised_export_is_smaller_and_loads_with_the_same_logits(lowrank_run, tmp_path):
    factors, merged = tmp_path / "hf", tmp_path / "merged"
    assert _invoke("export", lowrank_run, "--to", "hf", "--out", factors, "--device", "cpu").exit_code == 0
    assert _invoke("export", lowrank_run, "--to", "hf-merged", "--out", merged, "--device", "cpu").exit_code == 0
    allocation = json.loads((lowrank_run / "best_allocation.json").read_text())
    ranks = allocation["module_ranks"]
    assert ranks and allocation["lowrank"]["name"] == "lowrank"
    config = json.loads((factors / "config.json").read_text())
    assert config["sieve_lowrank"] == ranks

    small = sieve.load_pretrained(factors)
    plain = AutoModelForCausalLM.from_pretrained(merged)  # the standard layout, loadable by anything
    dense = AutoModelForCausalLM.from_pretrained(_model_dir(lowrank_run))
    for name, rank in ranks.items():
        module = small.get_submodule(name)
        assert isinstance(module, FactorizedLinear) and module.rank == rank
        assert module.project.weight.shape == (rank, module.in_features)
    saved = sum(module.in_features * module.out_features - r * (module.in_features + module.out_features)
                for module, r in ((small.get_submodule(n), r) for n, r in ranks.items()))
    assert _params(plain) - _params(small) == saved > 0
    assert _params(plain) == _params(dense)  # merged: same size as dense
    size = lambda folder: sum(f.stat().st_size for f in folder.glob("*.safetensors"))  # noqa: E731
    assert size(factors) < size(merged)
    prune_json = json.loads((factors / "prune.json").read_text())
    assert prune_json["parameters_removed"] == saved

    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = small(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # factorised forward = merged forward up to float reassociation
    again = tmp_path / "again"
    small.save_pretrained(again)
    with torch.no_grad():
        assert torch.equal(sieve.load_pretrained(again)(input_ids=ids).logits, a)  # save → load: identical
    out = small.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def _model_dir(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["model"]


def test_lm_eval_and_peft_work_on_the_loaded_model(lowrank_run, tmp_path, tiny_task):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from sieve.evaluate.lm_eval_runner import run_lm_eval

    out = tmp_path / "hf"
    assert _invoke("export", lowrank_run, "--to", "hf", "--out", out, "--device", "cpu").exit_code == 0
    model, tokenizer = sieve.load_pretrained(out), AutoTokenizer.from_pretrained(out)
    results = run_lm_eval(model, tokenizer, [str(tiny_task)], batch_size=8)["tiny_sentiment"]
    assert results["n"] == 24 and 0.0 <= results["acc"] <= 1.0
    result = _invoke("eval", out, "--task", tiny_task, "--general", _corpus(lowrank_run), "--device", "cpu")
    assert result.exit_code == 0, result.output
    row = json.loads((out / "eval.json").read_text())["rows"][0]
    assert row["parameters"] == _params(model)
    assert row["task_acc"] == pytest.approx(results["acc"], abs=1e-12)  # sieve's scorer = lm-eval on the same docs

    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    targets = {n for n, _ in lora.named_modules() if n.endswith(".lora_A")}
    name = next(iter(json.loads((out / "config.json").read_text())["sieve_lowrank"]))
    assert any(f"{name}.project" in t for t in targets) and any(f"{name}.expand" in t for t in targets)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < _params(model) / 10
    loss = lora(input_ids=torch.randint(0, 100, (2, 8)), labels=torch.randint(0, 100, (2, 8))).loss
    loss.backward()
    assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)


def _corpus(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["general"]


def test_masks_and_recipes_refuse_factorised_allocations(lowrank_run, tmp_path):
    for fmt in ("masks", "llmcompressor"):
        result = _invoke("export", lowrank_run, "--to", fmt, "--out", tmp_path / "x", "--device", "cpu")
        assert result.exit_code == 2 and "factorises" in result.output, result.output
