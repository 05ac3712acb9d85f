from __future__ import annotations

import pytest

from sieve.config import CalibrationConfig, EvalSettings, SearchConfig


@pytest.fixture
def search_config(tiny_model_dir, tiny_task, tiny_corpus):
    def make(**changes) -> SearchConfig:
        base = dict(
            model=str(tiny_model_dir), task=str(tiny_task), general=str(tiny_corpus), budget=0.5, generations=3,
            offspring=4, population=3, seed=0, validation_examples=12, stages=(4,), keep=(2,), batch_size=8,
            device="cpu", calibration=CalibrationConfig(general_blocks=4, block_len=32, task_examples=8, batch_size=4),
            evaluation=EvalSettings(test_examples=8, ppl_blocks=2, block_len=32),
        )
        base.update(changes)
        return SearchConfig(**base)

    return make
