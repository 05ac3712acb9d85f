"""Tiny tunings: a few steps of rank-4 LoRA on the tiny Llama's finished search run (seconds)."""

from __future__ import annotations

import pytest

TINY_TUNE = dict(steps=12, batch_size=4, warmup_steps=1, eval_every=3, checkpoint_every=3, train_examples=16,
                 validation_examples=8, lora=dict(rank=4, alpha=8.0), lr=1e-2, max_length=128, eval_batch_size=8,
                 device="cpu")


@pytest.fixture(scope="session")
def tiny_tune_fields():
    return dict(TINY_TUNE)


@pytest.fixture(scope="session")
def tune_config():
    """``tune_config(source, **changes)``: a TuneConfig for a tiny tuning of ``source``."""
    from sieve.config import validate
    from sieve.tune.config import TuneConfig

    def make(source, **changes):
        return validate(TuneConfig, {**TINY_TUNE, "source": str(source), **changes})

    return make


@pytest.fixture(scope="session")
def tuned_run(finished_run, tune_config, tmp_path_factory):
    """The finished tiny run tuned for 6 steps: ``(output folder, summary)``. Read only."""
    from sieve.tune.run import start

    out = tmp_path_factory.mktemp("tuned") / "out"
    summary = start(tune_config(finished_run), out)
    return out, summary
