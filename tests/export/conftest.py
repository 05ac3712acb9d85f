"""A tiny finished search run (with its final report) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sieve.config import CalibrationConfig, EvalSettings, SearchConfig
from sieve.search.run import SearchRun, open_run


def tiny_search_config(model: Path, task: Path, corpus: Path, **changes) -> SearchConfig:
    base = dict(
        model=str(model), task=str(task), general=str(corpus), budget=0.5, generations=2, offspring=4, population=3,
        seed=0, validation_examples=12, stages=(4,), keep=(2,), batch_size=8, device="cpu",
        calibration=CalibrationConfig(general_blocks=4, block_len=32, task_examples=8, batch_size=4),
        evaluation=EvalSettings(test_examples=8, ppl_blocks=2, block_len=32),
    )
    base.update(changes)
    return SearchConfig(**base)


def make_run(run_dir: Path, config: SearchConfig) -> Path:
    config, run_dir = open_run(config, run_dir, resume=False)
    SearchRun(config, run_dir).execute(report=True)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, tiny_task, tiny_corpus, tmp_path_factory) -> Path:
    """A finished per_matrix search (fused scores) on the tiny Llama: stats/, best_allocation.json, results.json."""
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", tiny_search_config(tiny_model_dir, tiny_task, tiny_corpus))
