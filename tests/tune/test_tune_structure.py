"""The structure the search chose survives tuning: zeros, factor ranks and the block count."""

import json

import pytest
import torch
from safetensors.torch import load_file

import sieve
from sieve.models.adapters import adapter_for, find_matrices
from sieve.tune.base import describe_source, open_base
from sieve.tune.run import start


def _zeros(model) -> dict[str, torch.Tensor]:
    return {m.name: (m.weight == 0).clone() for m in find_matrices(model)}


def test_zeros_stay_exactly_zero_and_the_model_changed(finished_run, tuned_run):
    out, summary = tuned_run
    base = open_base(describe_source(finished_run), device="cpu", dtype="float32")
    tuned = sieve.load_pretrained(out)
    before, after = _zeros(base.model), _zeros(tuned)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the same positions, not just the same count
    total = sum(int(z.sum()) for z in before.values())
    assert total > 0 and summary["structure"]["zeros"] == {"before": total, "after": total}
    assert summary["masked_modules"] > 0 and summary["best_step"] > 0
    changed = [n for n, m in zip(before, find_matrices(tuned)) if not torch.equal(
        base.model.get_submodule(n).weight, m.weight)]
    assert changed  # tuning moved the kept weights
    assert summary["after"]["val_nll"] < summary["before"]["val_nll"]
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert history[0]["step"] == 0 and history[0]["val_nll"] == summary["before"]["val_nll"]


def test_tuned_folder_logits_equal_the_adapter_model(finished_run, tuned_run):
    """What is trained is what is deployed: the merged folder computes the adapter model's logits."""
    from sieve.tune.config import LoraSettings
    from sieve.tune.masked_lora import attach, load_adapter_state, lora_targets

    out, summary = tuned_run
    base = open_base(describe_source(finished_run), device="cpu", dtype="float32")
    attach(base.model, lora_targets(base.model), LoraSettings(**summary["config"]["lora"]), keep_zeros=True, seed=0)
    load_adapter_state(base.model, load_file(str(out / "adapters" / "best.safetensors")))
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted, merged = base.model(ids).logits, sieve.load_pretrained(out)(ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def lowrank_folder(tiny_model_dir, tiny_task, tiny_corpus, tmp_path_factory):
    from sieve.config import validate
    from sieve.export.hf import prune_model
    from sieve.prune.config import PruneConfig

    out = tmp_path_factory.mktemp("lowrank") / "folder"
    cfg = validate(PruneConfig, dict(model=str(tiny_model_dir), task=str(tiny_task), general=str(tiny_corpus),
                                     sparsity=0.3, device="cpu", primitive={"name": "lowrank", "covariance": "general"},
                                     calibration=dict(general_blocks=4, block_len=32, task_examples=8, batch_size=4)))
    prune_model(cfg, out)
    return out


def test_factorised_matrices_keep_their_ranks(lowrank_folder, tune_config, tmp_path):
    before = sieve.load_pretrained(lowrank_folder)
    ranks = before.config.sieve_lowrank
    assert ranks
    summary = start(tune_config(lowrank_folder, general=None), tmp_path / "tuned")
    after = sieve.load_pretrained(tmp_path / "tuned")
    assert after.config.sieve_lowrank == ranks
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(after) == count(before) == summary["structure"]["parameters"]["after"]
    name = next(iter(ranks))
    part = after.get_submodule(name)
    assert part.project.weight.shape == before.get_submodule(name).project.weight.shape
    assert not torch.equal(part.project.weight, before.get_submodule(name).project.weight)
    assert summary["lora_modules"] == 2 * len(ranks) == len(find_matrices(before))  # one adapter per part


def test_removed_blocks_stay_removed(tiny_model_dir, tune_config, tmp_path):
    from sieve.models.depth import remove_blocks
    from sieve.models.loading import load_model

    loaded = load_model(str(tiny_model_dir))
    remove_blocks(loaded.model, [1])
    shallow = tmp_path / "shallow"
    loaded.model.save_pretrained(shallow)
    loaded.tokenizer.save_pretrained(shallow)
    summary = start(tune_config(shallow), tmp_path / "tuned")
    tuned = sieve.load_pretrained(tmp_path / "tuned")
    assert len(adapter_for(tuned).blocks(tuned)[1]) == 1 == tuned.config.num_hidden_layers
    assert summary["structure"]["blocks"] == {"before": 1, "after": 1}
