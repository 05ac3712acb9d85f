from pathlib import Path

import pytest

from sieve.config import PruneConfig, SearchConfig, digest, from_dict, load_yaml, to_dict
from sieve.errors import SieveError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = from_dict(SearchConfig, {**load_yaml(path), "budget": 0.5})
    assert cfg.budget == 0.5 and cfg.generations > 0


def test_round_trip_and_digest_stable():
    cfg = SearchConfig(budget=0.6, stages=(4, 8), keep=(3, 2), validation_examples=16)
    again = from_dict(SearchConfig, to_dict(cfg))
    assert again == cfg and digest(again) == digest(cfg)
    assert digest(SearchConfig(budget=0.5)) != digest(cfg)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"budget": 1.0}, "--budget must be a fraction"),
        ({"stages": (8, 4), "keep": (2, 2)}, "stage sizes must increase"),
        ({"keep": (9,)}, "keep must be positive and non-increasing"),
        ({"workers": -1}, "--workers must be >= 0"),
        ({"tolerance": 2.0}, "--tolerance must be a fraction"),
        ({"generations": 0}, "generations must be positive"),
    ],
)
def test_bad_search_configs(changes, message):
    with pytest.raises(SieveError, match=message):
        SearchConfig(**changes)


def test_unknown_and_mistyped_keys():
    with pytest.raises(SieveError, match="unknown config key calibration.blocks"):
        from_dict(SearchConfig, {"calibration": {"blocks": 3}})
    with pytest.raises(SieveError, match="generations must be int"):
        from_dict(SearchConfig, {"generations": "many"})
    with pytest.raises(SieveError, match="sparsity must be a fraction"):
        from_dict(PruneConfig, {"sparsity": -0.1})
