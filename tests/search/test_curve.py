"""``evaluation: {curve: true}``: every generation's best candidate measured on the test split."""

from __future__ import annotations

import json

import numpy as np

from sieve.metrics.quality import QualityProbe
from sieve.report import write_report
from sieve.search.run import prepare
from sieve.search.rundir import RunDir


def test_curve_scores_each_generations_best_on_test_and_the_report_shows_it(search_config, run_search, tmp_path):
    config = search_config(generations=3, evaluation={"test_examples": 16, "ppl_blocks": 2, "curve": True})
    outcome = run_search(config, tmp_path / "run", report=True)
    history = RunDir(tmp_path / "run").history()
    curve = outcome["curve"]
    assert [r["generation"] for r in curve] == [h["generation"] for h in history]
    assert [r["validation_fitness"] for r in curve] == [h["best"] for h in history]
    assert curve[0]["changed"] and [r["changed"] for r in curve[1:]] == [
        h["best_genome"] != p["best_genome"] for p, h in zip(history, history[1:])]
    final = next(r for r in outcome["table"] if r["method"] == "sieve-search")
    assert curve[-1]["test_acc"] == final["task_acc"]  # the last generation's best is the search's best
    # Recomputed independently: the test metrics of generation 0's best.
    prepared = prepare(config, None)
    ws = prepared.workspace
    prepared.pruner.apply(prepared.space.allocation(np.array(history[0]["best_genome"])))
    report = QualityProbe(ws.tokenizer, ws.task, None, config.evaluation).measure(ws.model, prepared.space.matrices)
    assert (curve[0]["test_acc"], curve[0]["test_nll"]) == (report.task_acc, report.task_nll)
    prepared.evaluator.close()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["curve"] == curve
    md = write_report(tmp_path / "run")["markdown"].read_text()
    assert "## Validation and test per generation" in md
    assert f"| {curve[-1]['generation']} | {curve[-1]['validation_fitness']:.4f} | {curve[-1]['test_acc']:.3f} |" in md


def test_curve_is_off_by_default(finished_run):
    assert "curve" not in json.loads((finished_run / "results.json").read_text())
