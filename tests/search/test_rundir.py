"""Runs are self-contained: started with relative paths, resumed from anywhere, refused when an input changed."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sieve.cli import app
from sieve.search.checkpoint import Checkpoint

SMALL = ("validation_examples: 12\nstages: [4]\npromote: [2]\noffspring: 4\npopulation: 3\nbatch_size: 8\n"
         "calibration: {general_blocks: 4, block_len: 32, task_examples: 8, batch_size: 4}\n"
         "evaluation: {test_examples: 8, ppl_blocks: 2, block_len: 32}\ndevice: cpu\n")


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def project(tmp_path, tiny_model_dir, tiny_task, tiny_corpus) -> Path:
    """A user's project folder: model, corpus and a task whose YAML names its data *relative* to the folder."""
    root = tmp_path / "project"
    (root / "tasks" / "data").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copy(tiny_corpus, root / "general.txt")
    cfg = yaml.safe_load(tiny_task.read_text())
    for split, path in cfg["dataset_kwargs"]["data_files"].items():
        shutil.copy(path, root / "tasks" / "data" / f"{split}.jsonl")
        cfg["dataset_kwargs"]["data_files"][split] = f"tasks/data/{split}.jsonl"
    (root / "tasks" / "mytask.yaml").write_text(yaml.safe_dump(cfg))
    (root / "small.yaml").write_text(SMALL)
    return root


def _start(generations: int, run: Path):
    return _invoke("search", "--config", "small.yaml", "--budget", "0.5", "--model", "model", "--task",
                   "tasks/mytask.yaml", "--general", "general.txt", "--generations", generations, "--run-dir", run)


def test_relative_paths_resume_from_another_directory_bit_for_bit(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    assert _start(3, tmp_path / "full").exit_code == 0
    result = _start(1, tmp_path / "part")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())
    assert config["task"] == str(project / "tasks" / "mytask.yaml") and config["model"] == str(project / "model")
    assert config["workdir"] == str(project)
    assert set(config["digests"]) == {str(project / "tasks" / "mytask.yaml"), str(project / "general.txt"),
                                      *(str(project / "tasks" / "data" / f"{s}.jsonl") for s in ("train", "validation", "test"))}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = _invoke("search", "--resume", tmp_path / "part", "--generations", 3)
    assert result.exit_code == 0, result.output
    full, part = (json.loads((tmp_path / r / "best_allocation.json").read_text()) for r in ("full", "part"))
    assert part["modules"] == full["modules"] and part["generation"] == full["generation"] == 3
    a, b = (Checkpoint.load(tmp_path / r / "checkpoint" / "state.json") for r in ("full", "part"))
    assert a.pop_x == b.pop_x and a.pop_f == b.pop_f and a.cache == b.cache and a.rng_state == b.rng_state


def test_a_changed_input_file_refuses_the_resume_naming_it(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    assert _start(1, tmp_path / "run").exit_code == 0
    data = project / "tasks" / "data" / "validation.jsonl"
    before = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["digests"][str(data)]
    data.write_text(data.read_text() + '{"text": "one more review", "label": 1}\n')
    snapshot = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    result = _invoke("search", "--resume", tmp_path / "run", "--generations", 2)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"input file {data} changed (digest {before} at the start" in text
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # nothing was touched
