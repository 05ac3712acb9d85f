"""The tune config: shipped presets validate, bad values are one line naming the field, round trips exact."""

import pytest

from sieve.config import load_yaml, to_dict, validate
from sieve.errors import SieveError
from sieve.tune.config import TuneConfig, preset_file, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_shipped_tune_presets_validate(name):
    cfg = validate(TuneConfig, {**load_yaml(preset_file(name)), "source": "/tmp/run"})
    assert cfg.steps > cfg.warmup_steps and cfg.lora.rank > 0


def test_gpu_preset_is_sqft_recipe():
    assert preset_names() == ["gpu"]
    cfg = validate(TuneConfig, {**load_yaml(preset_file("gpu")), "source": "/tmp/run"})
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lr, cfg.device) == (32, 64.0, 3e-4, "cuda")
    assert cfg.distill is not None and cfg.distill.general_mix == 0.5


def test_defaults_round_trip_and_identity():
    cfg = TuneConfig(source="/tmp/run")
    assert (cfg.steps, cfg.lora.rank, cfg.lora.scaling, cfg.lr, cfg.keep_zeros) == (40, 8, 2.0, 3e-4, True)
    assert validate(TuneConfig, to_dict(cfg)) == cfg
    assert "device" not in cfg.identity() and "steps" in cfg.identity()


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps: Input should be greater than 0"),
    ({"lora": {"rank": 0}}, "lora.rank: Input should be greater than 0"),
    ({"lora": {"ranks": 4}}, "lora.ranks: unknown key"),
    ({"distill": {"general_mix": 1.5}}, "distill.general_mix: Input should be less than or equal to 1"),
    ({"warmup_steps": 40}, "warmup_steps (40) must be below steps (40)"),
    ({"device": "gpu"}, "device: must be auto, cpu, cuda or cuda:N"),
])
def test_bad_tune_configs(changes, message):
    with pytest.raises(SieveError, match=None) as info:
        validate(TuneConfig, {"source": "/tmp/run", **changes}, "t.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)
