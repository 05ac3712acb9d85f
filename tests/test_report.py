"""``sieve report RUN`` on a tiny finished run: three PNGs and report.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.errors import SieveError
from sieve.report import parse_module, sparsity_grid, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_three_pngs_and_markdown(finished_run):
    result = CliRunner().invoke(app, ["report", str(finished_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = finished_run / "report"
    for name in ("fitness.png", "allocation.png", "quality.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    md = (out / "report.md").read_text()
    for name in ("fitness.png", "allocation.png", "quality.png"):
        assert f"]({name})" in md
    table = json.loads((finished_run / "results.json").read_text())["table"]
    for row in table:
        assert f"| {row['method']} | {row['sparsity']:.4f} | {row['task_acc']:.3f} |" in md
    assert "| budget | `0.5` |" in md and "| space | `per_matrix` |" in md
    assert "## Execution\n\n- one candidate at a time, in this process; pruning in place" in md
    results = json.loads((finished_run / "results.json").read_text())
    assert set(results["phases"]) >= {"model_load", "statistics", "setup", "loop", "final_evaluation"}
    assert results["phases"]["loop"] > 0 and results["execution"]["strategy"] == "sequential"
    assert "- wall time by phase: model load " in md
    assert sorted(p.name for p in out.iterdir()) == ["allocation.png", "fitness.png", "quality.png", "report.md"]


def test_report_without_results_table_and_errors(finished_run, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "history.jsonl", "best_allocation.json"):
        (partial / name).write_bytes((finished_run / name).read_bytes())
    written = write_report(partial)
    assert set(written) == {"fitness", "allocation", "markdown"}
    assert "no result table yet" in written["markdown"].read_text()
    with pytest.raises(SieveError, match="not a sieve run directory"):
        write_report(tmp_path / "nowhere")
    (partial / "history.jsonl").write_text("")
    with pytest.raises(SieveError, match="no finished generation"):
        write_report(partial)


def test_grid_parsing_is_architecture_agnostic():
    assert parse_module("model.layers.12.self_attn.q_proj") == (12, "self_attn.q_proj")
    assert parse_module("transformer.h.3.attn.c_attn") == (3, "attn.c_attn")
    assert parse_module("lm_head") is None
    grid = sparsity_grid({"transformer.h.0.attn.c_attn": 0.5, "transformer.h.0.mlp.c_fc": 0.25, "transformer.h.2.mlp.c_fc": 0.75})
    assert grid.kinds == ["attn.c_attn", "mlp.c_fc"] and grid.blocks == [0, 2]
    np.testing.assert_array_equal(grid.values, [[0.5, np.nan], [0.25, 0.75]])
