"""The command line end to end on a tiny random model: happy paths and one-line errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from sieve.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert needle in text, text


@pytest.fixture
def common(tiny_model_dir, tiny_task, tiny_corpus):
    return ["--model", tiny_model_dir, "--task", tiny_task, "--general", tiny_corpus, "--device", "cpu"]


def test_prune_then_eval_round_trip(common, tmp_path, tiny_task, tiny_corpus):
    out = tmp_path / "pruned"
    result = _invoke("prune", *common, "--method", "wanda", "--sparsity", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    alloc = json.loads((out / "allocation.json").read_text())
    assert alloc["format"] == "sieve.allocation/v1"
    for name, s in alloc["modules"].items():
        w = model.get_submodule(name).weight
        assert ((w == 0).sum(1) == int(w.shape[1] * s)).all()
    result = _invoke("eval", out, "--task", tiny_task, "--general", tiny_corpus, "--baseline", "dense", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "pruned"]
    assert rows[0]["sparsity"] < 0.01 and rows[1]["sparsity"] == pytest.approx(0.5, abs=1e-9)


def test_prune_by_allocation_and_2_4(common, tmp_path):
    out = tmp_path / "nm"
    assert _invoke("prune", *common, "--method", "magnitude", "--pattern", "2:4", "--out", out).exit_code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].mlp.up_proj.weight
    assert ((w.view(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()
    again = tmp_path / "again"
    assert _invoke("prune", *common, "--method", "magnitude", "--allocation", out / "allocation.json", "--out", again).exit_code == 0
    w2 = AutoModelForCausalLM.from_pretrained(again).model.layers[0].mlp.up_proj.weight
    assert torch.equal((w == 0), (w2 == 0)) or ((w2 == 0).float().mean() == 0.5)


def test_bad_inputs_are_one_line(common, tmp_path, tiny_model_dir, tiny_task):
    _one_line_error(_invoke("prune", "--model", tmp_path / "missing", "--out", tmp_path / "o"), "does not exist")
    _one_line_error(_invoke("prune", *common, "--sparsity", "1.5", "--out", tmp_path / "o"), "--sparsity: Input should be less than 1 (got 1.5)")
    _one_line_error(_invoke("prune", *common, "--pattern", "3:7", "--method", "magnitude", "--out", tmp_path / "o"), "does not divide")
    _one_line_error(_invoke("prune", *common, "--method", "obs", "--out", tmp_path / "o"), "unknown scoring method")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: [unclosed\n")
    _one_line_error(_invoke("prune", *common[:2], "--task", bad_yaml, "--general", common[5], "--out", tmp_path / "o"), "bad.yaml")
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"format": "sieve.allocation/v1", "pattern": "unstructured", "modules": {"model.layers.9.mlp.up_proj": 0.5}}))
    _one_line_error(_invoke("prune", *common, "--method", "magnitude", "--allocation", alloc, "--out", tmp_path / "o"), "model.layers.9.mlp.up_proj")
    _one_line_error(_invoke("search", *common, "--budget", "1.2"), "--budget: Input should be less than 1 (got 1.2)")
    _one_line_error(_invoke("search", *common, "--budget", "0.5", "--space", "per_head"), "unknown search space")
    _one_line_error(_invoke("search", "--resume", tmp_path / "nowhere"), "not a sieve run directory")
    assert not (tmp_path / "o").exists()


def test_search_cli_and_pareto_mode(common, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("validation_examples: 12\nstages: [4]\npromote: [2]\noffspring: 4\npopulation: 3\ngenerations: 1\n"
                   "calibration: {general_blocks: 4, block_len: 32, task_examples: 8, batch_size: 4}\n"
                   "evaluation: {test_examples: 8, ppl_blocks: 2, block_len: 32}\n")
    result = _invoke("search", *common, "--config", cfg, "--budget", "0.5", "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "sieve-search" in result.output and (tmp_path / "run" / "best_allocation.json").exists()
    result = _invoke("search", *common, "--config", cfg, "--tolerance", "0.4", "--run-dir", tmp_path / "pareto")
    assert result.exit_code == 0, result.output
    frontier = json.loads((tmp_path / "pareto" / "frontier.json").read_text())
    assert len(frontier["frontier"]) == 4 and "largest budget within 0.4" in result.output
    assert result.output.count("tolerance 0.4") == 4  # one progress line per probed budget


def test_search_cli_stops_early_and_the_report_says_so(common, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("validation_examples: 12\nstages: [4]\npromote: [2]\noffspring: 4\npopulation: 3\n"
                   "calibration: {general_blocks: 4, block_len: 32, task_examples: 8, batch_size: 4}\n"
                   "evaluation: {test_examples: 8, ppl_blocks: 2, block_len: 32}\n")
    result = _invoke("search", *common, "--config", cfg, "--budget", "0.5", "--generations", "12",
                     "--selection-examples", "8", "--patience", "2", "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    done = results["generations_done"]
    assert results["early_stopping"]["stopped"] and done < 12
    assert f"early stopping after generation {done}" in result.output and "held-out 0." in result.output
    assert _invoke("report", tmp_path / "run").exit_code == 0
    assert f"stopped after generation {done}" in (tmp_path / "run" / "report" / "report.md").read_text()
    _one_line_error(_invoke("search", *common, "--config", cfg, "--budget", "0.5", "--patience", "2",
                            "--run-dir", tmp_path / "other"), "set selection_examples too")
