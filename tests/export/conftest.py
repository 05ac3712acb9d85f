"""A tiny finished search run (with its final report) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(search_config, run_search, tmp_path_factory) -> Path:
    """A finished per_matrix search (fused scores) on the tiny Llama: stats/, best_allocation.json, results.json."""
    path = tmp_path_factory.mktemp("runs") / "tiny"
    run_search(search_config(generations=2), path, report=True)
    return path
