"""Export round trips on a tiny finished search run: hf, masks, llm-compressor recipe, tables, refusals."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from sieve.cli import app
from sieve.errors import SieveError
from sieve.export import export_allocation
from sieve.export.hf import apply_masks
from sieve.export.llmcompressor import build_recipe
from sieve.export.masks import read_masks
from sieve.models.adapters import find_matrices
from sieve.primitives.mask import Pattern, row_prune_count
from sieve.prune.allocation import Allocation

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _allocation(run: Path) -> dict[str, float]:
    return json.loads((run / "best_allocation.json").read_text())["modules"]


def test_hf_export_loads_with_from_pretrained_at_the_allocated_sparsity(finished_run, tmp_path):
    out = tmp_path / "hf"
    result = _invoke("export", finished_run, "--to", "hf", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert not out.with_name("hf.partial").exists()
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, nothing from sieve
    dense = AutoModelForCausalLM.from_pretrained(yaml.safe_load((finished_run / "config.yaml").read_text())["model"])
    modules = _allocation(finished_run)
    assert len(modules) == 14
    for name, s in modules.items():
        w = model.get_submodule(name).weight
        cols = w.shape[1]
        assert ((w == 0).sum(1) == row_prune_count(cols, s)).all(), name
        assert float((w == 0).float().mean()) == pytest.approx(s)  # the tiny run's levels are whole weights per row
        kept = w != 0
        assert torch.equal(w[kept], dense.get_submodule(name).weight[kept])  # fused is mask-only: kept weights untouched
    beside = json.loads((out / "allocation.json").read_text())
    assert beside["modules"] == modules and beside["format"] == "sieve.allocation/v1"
    assert beside["generation"] == json.loads((finished_run / "best_allocation.json").read_text())["generation"]
    assert beside["achieved_sparsity"] == pytest.approx(0.5)
    # embeddings and lm_head are never pruned
    assert torch.equal(model.lm_head.weight, dense.lm_head.weight)


def test_masks_reapply_to_a_perturbed_copy(finished_run, tmp_path):
    masks_file = tmp_path / "masks.safetensors"
    assert _invoke("export", finished_run, "--to", "masks", "--out", masks_file, "--device", "cpu").exit_code == 0
    masks, meta = read_masks(masks_file)
    modules = _allocation(finished_run)
    assert set(masks) == set(modules)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert 1 - float(mask.float().mean()) == pytest.approx(modules[name])
    assert json.loads(meta["sparsity"]) == pytest.approx(modules)
    # 1 bit per weight (+ header)
    assert masks_file.stat().st_size < sum(m.numel() for m in masks.values()) / 8 + 4096

    # The masks are the hf export's zeros.
    hf = tmp_path / "hf"
    assert _invoke("export", finished_run, "--to", "hf", "--out", hf, "--device", "cpu").exit_code == 0
    pruned = AutoModelForCausalLM.from_pretrained(hf)
    for name, mask in masks.items():
        assert torch.equal(pruned.get_submodule(name).weight != 0, mask)

    # A "fine-tuned" variant: every weight moved.
    base = yaml.safe_load((finished_run / "config.yaml").read_text())["model"]
    tuned = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned_dir = tmp_path / "tuned"
    tuned.save_pretrained(tuned_dir)
    for f in Path(base).glob("tokenizer*"):
        shutil.copy(f, tuned_dir)
    out = tmp_path / "tuned-pruned"
    result = _invoke("prune", "--model", tuned_dir, "--masks", masks_file, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    again = AutoModelForCausalLM.from_pretrained(out)
    for name, mask in masks.items():
        w, w0 = again.get_submodule(name).weight, tuned.get_submodule(name).weight
        assert torch.equal(w == 0, ~mask), name  # zeros at exactly the same positions
        assert torch.equal(w[mask], w0[mask])  # kept weights untouched
    untouched = [n for n, _ in again.named_parameters() if not any(n.startswith(m) for m in masks)]
    assert untouched and all(torch.equal(again.get_parameter(n), tuned.get_parameter(n)) for n in untouched)
    written = json.loads((out / "allocation.json").read_text())
    assert written["modules"] == pytest.approx(modules)
    assert json.loads((out / "prune.json").read_text())["masks_weights_hash"] == meta["weights_hash"]


def test_masks_refuse_mismatched_models(finished_run, tmp_path, llama, gpt2):
    masks_file = tmp_path / "masks.safetensors"
    export_allocation(finished_run, "masks", masks_file, device="cpu")
    masks, _ = read_masks(masks_file)
    matrices = find_matrices(llama)
    name = "model.layers.0.mlp.up_proj"
    with pytest.raises(SieveError, match=r"mask of model.layers.0.mlp.up_proj has shape \(64, 16\), the model's weight \(64, 32\)"):
        apply_masks(matrices, {name: masks[name][:, :16]})
    with pytest.raises(SieveError, match="model.layers.7.mlp.up_proj"):
        apply_masks(matrices, {"model.layers.7.mlp.up_proj": masks[name]})
    gpt2_dir = tmp_path / "gpt2"
    gpt2.save_pretrained(gpt2_dir)
    result = _invoke("prune", "--model", gpt2_dir, "--masks", masks_file, "--out", tmp_path / "o", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "masks name module 'model.layers.0.self_attn.q_proj' that the model lacks" in result.output
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    result = _invoke("prune", "--model", gpt2_dir, "--masks", bogus, "--out", tmp_path / "o", "--device", "cpu")
    assert result.exit_code == 2 and "is not a safetensors file" in result.output
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ llm-compressor recipe

# llm-compressor 0.14's schema (``SparsityModifierBase`` + subclass fields, pydantic, extra fields
# rejected) and recipe layout (``<name>_stage`` → ``<group>_modifiers`` → ``{ModifierClass: args}``).
BASE_FIELDS = {"sparsity", "sparsity_profile", "mask_structure", "owl_m", "owl_lmbda", "sequential_update", "targets",
               "ignore", "index", "group", "start", "end", "update"}
MODIFIER_FIELDS = {
    "SparseGPTModifier": BASE_FIELDS | {"block_size", "dampening_frac", "preserve_sparsity_mask", "offload_hessians"},
    "WandaPruningModifier": BASE_FIELDS,
}


def _modifiers(recipe: dict) -> list[tuple[str, dict]]:
    found = []
    for stage_key, stage in recipe.items():
        assert stage_key.endswith("_stage") and isinstance(stage, dict)
        for group_key, group in stage.items():
            assert group_key.endswith("_modifiers") and isinstance(group, dict)
            found += list(group.items())
    return found


def _matched(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """``compressed_tensors.match_named_modules`` for exact-name targets: named_modules() order."""
    return [name for name, _ in model.named_modules() if name in set(targets)]


@pytest.mark.parametrize("modifier", ["sparsegpt", "wanda"])
def test_llmcompressor_recipe_matches_schema_and_named_modules_order(finished_run, tmp_path, modifier):
    out = tmp_path / "recipe.yaml"
    result = _invoke("export", finished_run, "--to", "llmcompressor", "--modifier", modifier, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert 'mask_structure: "0:0"' in text
    ((cls, args),) = _modifiers(yaml.safe_load(text))
    assert cls == {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}[modifier]
    assert set(args) <= MODIFIER_FIELDS[cls]
    assert re.fullmatch(r"\d+:\d+", args["mask_structure"])
    model = AutoModelForCausalLM.from_pretrained(yaml.safe_load((finished_run / "config.yaml").read_text())["model"])
    order = [name for name, _ in model.named_modules()]
    modules = _allocation(finished_run)
    assert args["targets"] == [n for n in order if modules.get(n, 0) > 0]
    assert _matched(model, args["targets"]) == args["targets"]
    assert len(args["sparsity"]) == len(args["targets"])
    assert args["sparsity"] == pytest.approx([modules[t] for t in args["targets"]], abs=1e-6)
    assert all(isinstance(s, float) and 0 < s < 1 for s in args["sparsity"])


def test_recipe_groups_patterns_and_skips_dense_modules(llama, gpt2):
    matrices = find_matrices(llama)
    names = [m.name for m in matrices]
    sparsity = {n: (0.5 if i % 3 else 0.0) for i, n in enumerate(names)}
    sparsity[names[1]] = 0.25
    patterns = {n: Pattern(2, 4) for i, n in enumerate(names) if i % 3 == 2}
    recipe = build_recipe(matrices, Allocation(sparsity, Pattern(), patterns), "sparsegpt")
    groups = dict(recipe["sparsity_stage"])
    assert set(groups) == {"sparsity_unstructured_modifiers", "sparsity_2_4_modifiers"}
    nm = groups["sparsity_2_4_modifiers"]["SparseGPTModifier"]
    un = groups["sparsity_unstructured_modifiers"]["SparseGPTModifier"]
    assert nm["mask_structure"] == "2:4" and un["mask_structure"] == "0:0"
    assert nm["targets"] == [n for n in names if n in patterns]
    assert un["targets"] == [n for n in names if sparsity[n] > 0 and n not in patterns]
    assert nm["sparsity"] == [0.5] * len(nm["targets"]) and un["sparsity"][0] == 0.25
    assert _matched(llama, nm["targets"]) == nm["targets"]
    with pytest.raises(SieveError, match="prunes no module"):
        build_recipe(matrices, Allocation({}), "sparsegpt")
    with pytest.raises(SieveError, match="--modifier must be one of"):
        build_recipe(matrices, Allocation(sparsity), "obs")
    conv = find_matrices(gpt2)
    with pytest.raises(SieveError, match="transformers Conv1D"):
        build_recipe(conv, Allocation({conv[0].name: 0.5}), "wanda")


# ------------------------------------------------------------------ tables


def test_csv_and_markdown_tables(finished_run, tmp_path):
    modules = _allocation(finished_run)
    export_allocation(finished_run, "csv", tmp_path / "t.csv", device="cpu")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [r["module"] for r in rows] == list(modules)
    assert list(rows[0]) == ["module", "block", "kind", "rows", "cols", "sparsity", "rank", "pruned_weights"]
    assert all(r["rank"] == "" for r in rows)  # a mask allocation factorises nothing
    first = rows[0]
    assert (first["block"], first["kind"], first["rows"], first["cols"]) == ("0", "self_attn.q_proj", "32", "32")
    for r in rows:
        assert float(r["sparsity"]) == pytest.approx(modules[r["module"]], abs=1e-6)
        assert int(r["pruned_weights"]) == int(r["rows"]) * row_prune_count(int(r["cols"]), modules[r["module"]])
    total = sum(int(r["rows"]) * int(r["cols"]) for r in rows)
    assert sum(int(r["pruned_weights"]) for r in rows) / total == pytest.approx(0.5)
    export_allocation(finished_run, "markdown", tmp_path / "t.md", device="cpu")
    md = (tmp_path / "t.md").read_text()
    assert md.count("| `model.layers.") == 14
    assert f"| **all 14 matrices** ({total:,} weights) | | | | | 0.5000 | |" in md


# ------------------------------------------------------------------ refusals


def test_mismatched_allocations_are_refused_with_the_difference_named(finished_run, tmp_path, tiny_model_dir):
    body = json.loads((finished_run / "best_allocation.json").read_text())
    renamed = dict(body, modules={k.replace("layers.1.mlp.up_proj", "layers.1.mlp.upper_proj"): v for k, v in body["modules"].items()})
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(renamed))
    with pytest.raises(SieveError, match=r"names module 'model.layers.1.mlp.upper_proj' that model .* lacks; closest module there: 'model.layers.1.mlp.up_proj'"):
        export_allocation(path, "csv", tmp_path / "x.csv", device="cpu")

    other = tmp_path / "other-weights"  # same architecture and names, one weight changed
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    model.save_pretrained(other)
    for fmt, out in (("csv", tmp_path / "x.csv"), ("hf", tmp_path / "x-hf")):
        result = _invoke("export", finished_run, "--to", fmt, "--out", out, "--model", other, "--device", "cpu")
        assert result.exit_code == 2 and "Traceback" not in result.output
        text = " ".join(result.output.split())
        assert f"weights hash {body['weights_hash']}" in text and "hashes to" in text, text
        assert not out.exists()
    result = _invoke("prune", "--model", other, "--allocation", finished_run / "best_allocation.json",
                     "--out", tmp_path / "p", "--device", "cpu")
    assert result.exit_code == 2 and body["weights_hash"] in result.output
    result = _invoke("prune", "--allocation", finished_run, "--method", "magnitude", "--out", tmp_path / "p", "--device", "cpu")
    assert result.exit_code == 2 and "--method magnitude conflicts with the allocation's method" in result.output

    for args, needle in (
        (["--to", "onnx"], "unknown export format 'onnx'"),
        (["--to", "csv", "--modifier", "wanda"], "option --modifier does not apply to --to csv"),
    ):
        result = _invoke("export", finished_run, *args, "--out", tmp_path / "y", "--device", "cpu")
        assert result.exit_code == 2 and needle in result.output, result.output
    result = _invoke("export", tmp_path, "--to", "csv", "--out", tmp_path / "y")
    assert result.exit_code == 2 and "not a sieve run directory" in result.output
