"""Configs: every shipped preset and space validates, round trips are exact, bad values are one line."""

from pathlib import Path

import pytest

from sieve.config import digest, load_yaml, to_dict, validate
from sieve.errors import SieveError
from sieve.prune.config import PruneConfig
from sieve.resources import builtin_file, builtin_names
from sieve.search.config import SearchConfig


@pytest.mark.parametrize("name", builtin_names("configs"))
def test_shipped_configs_validate(name):
    cfg = validate(SearchConfig, {**load_yaml(builtin_file("configs", name)), "budget": 0.5})
    assert cfg.budget == 0.5 and cfg.generations > 0


def test_top_level_folders_are_the_packaged_ones():
    root = Path(__file__).resolve().parents[1]
    for kind in ("configs", "search_spaces"):
        assert (root / kind).resolve() == builtin_file(kind, builtin_names(kind)[0]).parent.resolve()


def test_round_trip_and_digest_stable():
    cfg = SearchConfig(budget=0.6, stages=(4, 8), promote=(3, 2), validation_examples=16)
    again = validate(SearchConfig, to_dict(cfg))
    assert again == cfg and digest(again) == digest(cfg)
    assert to_dict(cfg)["space"]["name"] == "per_matrix"  # the space is embedded, not referenced
    assert digest(SearchConfig(budget=0.5)) != digest(cfg)
    assert cfg.model_config["frozen"]
    with pytest.raises(Exception, match="frozen"):
        cfg.budget = 0.1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"budget": 1.0}, "budget: Input should be less than 1"),
        ({"budget": "half"}, "budget: Input should be a valid number"),
        ({"stages": (8, 4), "promote": (2, 2)}, "stage sizes must increase"),
        ({"promote": (9,)}, "promote must be positive and non-increasing"),
        ({"workers": -1}, "workers: Input should be greater than or equal to 0"),
        ({"tolerance": 2.0}, "tolerance: Input should be less than 1"),
        ({"generations": 0}, "generations: Input should be greater than 0"),
        ({"space": {"name": "x", "levels": {"min": "zero"}}}, "space.levels.min: Input should be a valid number"),
        ({"space": "per_head"}, "unknown search space 'per_head'"),
        ({"fitness": "accuracy"}, "unknown fitness 'accuracy'"),
        ({"device": "tpu"}, "device: must be auto, cpu, cuda or cuda:N"),
        ({"calibration": {"blocks": 3}}, "calibration.blocks: unknown key"),
    ],
)
def test_bad_search_configs(changes, message):
    with pytest.raises(SieveError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(SearchConfig, {"budget": 0.5, **changes})


def test_prune_config_validates_method_and_pattern():
    with pytest.raises(SieveError, match="sparsity: Input should be greater than or equal to 0"):
        validate(PruneConfig, {"sparsity": -0.1})
    with pytest.raises(SieveError, match="pattern '3:2' needs 0 < N < M"):
        validate(PruneConfig, {"primitive": {"name": "mask", "pattern": "3:2"}})
    assert validate(PruneConfig, {"primitive": {"name": "mask", "pattern": "2:4"}}).sparsity == 0.5
    with pytest.raises(SieveError, match="prunes exactly 0.5, not sparsity 0.3"):
        validate(PruneConfig, {"primitive": {"name": "mask", "pattern": "2:4"}, "sparsity": 0.3})


def test_paths_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "task.yaml").write_text("task: t\n")
    monkeypatch.chdir(tmp_path)
    cfg = validate(SearchConfig, {"budget": 0.5, "task": "task.yaml"})
    assert cfg.task == str(tmp_path / "task.yaml") and cfg.workdir == str(tmp_path)
    assert cfg.model == "smollm2-135m" and cfg.general == "wikipedia"


def test_benchmark_yamls_validate():
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    cfg = validate(SearchConfig, {**load_yaml(bench / "cpu_search.yaml"), "budget": 0.5})
    assert cfg.evaluation.test_examples == 200
    spaces = sorted((bench / "spaces").glob("*.yaml"))
    assert spaces
    for path in spaces:
        cfg = validate(SearchConfig, {"space": str(path), "budget": 0.3})
        assert cfg.space.lowrank is not None and cfg.space.lowrank.covariance == "task"
