"""lm-eval's own ``simple_evaluate`` on sieve's in-memory model agrees with sieve's fast path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.config import validate
from sieve.data.splits import SplitSpec, load_task
from sieve.data.task_spec import resolve_task
from sieve.errors import SieveError
from sieve.evaluate.config import EvalConfig
from sieve.evaluate.lm_eval_runner import run_lm_eval
from sieve.metrics.quality import MAX_LENGTH
from sieve.models.loading import load_model
from sieve.scoring.encode import encode_task
from sieve.scoring.plan import score_examples
from sieve.scoring.results import choice_metrics

runner = CliRunner()


def test_lm_eval_accuracy_equals_fast_path_on_the_same_docs(tiny_model_dir, tiny_task):
    loaded = load_model(str(tiny_model_dir))
    splits = load_task(str(tiny_task), SplitSpec(max_test=None))
    ours = choice_metrics(score_examples(loaded.model, encode_task(splits.test, loaded.tokenizer, MAX_LENGTH)))
    results = run_lm_eval(loaded.model, loaded.tokenizer, [str(tiny_task)], batch_size=8)
    theirs = results["tiny_sentiment"]
    assert theirs["n"] == len(splits.test) == 24
    assert theirs["spec"] == str(tiny_task)
    assert theirs["acc"] == pytest.approx(ours["acc"], abs=1e-12)
    limited = run_lm_eval(loaded.model, loaded.tokenizer, [str(tiny_task)], limit=5)["tiny_sentiment"]
    first5 = choice_metrics(score_examples(loaded.model, encode_task(splits.test[:5], loaded.tokenizer, MAX_LENGTH)))
    assert limited["n"] == 5 and limited["acc"] == pytest.approx(first5["acc"], abs=1e-12)


def test_task_resolution_is_one_resolver(tiny_task, tmp_path):
    ref = resolve_task(str(tiny_task))
    assert ref.name == "tiny_sentiment" and ref.target == str(tiny_task.resolve()) and not ref.registered
    assert resolve_task("hellaswag").registered and resolve_task("hellaswag").target == "hellaswag"
    assert validate(EvalConfig, {"lm_eval_tasks": "a, b"}).lm_eval_tasks == ("a", "b")
    with pytest.raises(SieveError, match="comma-separated"):
        validate(EvalConfig, {"lm_eval_tasks": "a,,b"})
    with pytest.raises(SieveError, match="task YAML not found"):
        resolve_task(str(tmp_path / "missing.yaml"))
    (tmp_path / "x.yaml").write_text("dataset_path: json\n")
    with pytest.raises(SieveError, match="no 'task:' name|not an lm-eval task YAML"):
        resolve_task(str(tmp_path / "x.yaml"))


def test_eval_cli_run_dir_with_lm_eval_and_dense_baseline(finished_run, tiny_task, tmp_path):
    result = runner.invoke(app, ["eval", str(finished_run), "--tasks", str(tiny_task), "--baseline", "dense", "--device", "cpu"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((finished_run / "eval.json").read_text())
    rows = report["rows"]
    assert [r["method"] for r in rows] == ["dense", "sieve-search"]
    assert report["config"]["task"] == str(tiny_task)  # the run's task by default
    assert rows[0]["sparsity"] == 0.0
    best = json.loads((finished_run / "best_allocation.json").read_text())
    assert rows[1]["sparsity"] == pytest.approx(best["achieved_sparsity"], abs=1e-9)
    for row in rows:  # same 24 test docs on both paths, same model state
        assert row["n_test"] == 24
        assert row["lm_eval"]["tiny_sentiment"]["acc"] == pytest.approx(row["task_acc"], abs=1e-12)

    # The same allocation as a file, applied in memory (statistics recomputed, cached).
    alloc = tmp_path / "alloc.json"
    alloc.write_text((finished_run / "best_allocation.json").read_text())
    result = runner.invoke(app, ["eval", str(alloc), "--task", str(tiny_task), "--general", report["config"]["general"],
                                 "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "alloc-eval.json").read_text())["rows"]
    assert [r["method"] for r in again] == ["alloc"]
    assert again[0]["sparsity"] == pytest.approx(rows[1]["sparsity"], abs=1e-12)


def test_eval_cli_errors_are_one_line(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--limit", "3"], catch_exceptions=False)
    assert result.exit_code == 2 and "--limit applies to lm-eval" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    result = runner.invoke(app, ["eval", str(bad)], catch_exceptions=False)
    assert result.exit_code == 2 and "not a sieve.allocation/v1 allocation" in result.output
