"""``sieve tune`` end to end on the tiny run, then ``sieve eval`` / ``sieve report`` of the output."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from sieve.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and text.startswith("error:") and len(text.splitlines()) == 1, text
    assert needle in text, text


@pytest.fixture
def tiny_yaml(tmp_path, tiny_tune_fields):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in tiny_tune_fields.items() if k not in ("steps", "lr")}))
    return path


def test_tune_eval_report(copy_run, tiny_yaml, tmp_path):
    run = copy_run()
    out = tmp_path / "tuned"
    result = _invoke("tune", run, "--out", out, "--config", tiny_yaml, "--steps", 6, "--lr", 0.03, "--lora-rank", 4)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("step   0/6  val NLL") and "(before tuning)" in lines[0]
    assert any(line.startswith("step   6/6  loss") and "ETA 0.0 min" in line for line in lines)
    summary = json.loads((out / "tuning.json").read_text())
    saved = yaml.safe_load((out / "tune.yaml").read_text())
    assert saved["steps"] == 6 and saved["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": []}
    assert saved["base"]["kind"] == "run" and saved["base"]["path"] == str(run)
    assert saved["digests"]["task_examples"] == summary["digests"]["task_examples"]
    assert f"best step {summary['best_step']} of 6" in result.output
    assert (out / "allocation.json").is_file() and (out / "config.json").is_file()

    result = _invoke("eval", out, "--device", "cpu", "--test-examples", 8)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["before", "after"]
    assert rows[0]["sparsity"] == pytest.approx(rows[1]["sparsity"], abs=0) and rows[0]["sparsity"] > 0.3
    assert rows[0]["parameters"] == rows[1]["parameters"]
    assert rows[0]["task_nll"] != rows[1]["task_nll"] or summary["best_step"] == 0

    result = _invoke("report", out)
    assert result.exit_code == 0, result.output
    text = (out / "report" / "report.md").read_text()
    assert "| before tuning | 0 |" in text and f"| tuned (best step) | {summary['best_step']} |" in text
    assert "| before tuning | " in text and "| after tuning | " in text  # the test rows of eval.json
    assert (out / "report" / "tuning.png").stat().st_size > 1000

    _error(_invoke("tune", run, "--out", out, "--config", tiny_yaml), "exists; pass --force")
    _error(_invoke("tune", "--resume", out), "holds a finished tuning")
    _error(_invoke("tune", run, "--out", run / "inside", "--force"), "lies inside the run")
    _error(_invoke("tune", tmp_path / "nothing", "--out", tmp_path / "x"), "does not exist")
    _error(_invoke("tune", run, "--out", tmp_path / "y", "--steps", 0), "--steps: Input should be greater than 0")
    _error(_invoke("tune", run, "--out", tmp_path / "y", "--config", "cpu"), "unknown tune config 'cpu'")
    _error(_invoke("tune", "--resume", out, "--steps", 3), "drop --steps")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (run / "inside").exists()


def test_unfinished_tuning_is_resumed_not_restarted(finished_run, tune_config, tmp_path):
    from sieve.tune.run import start

    out = tmp_path / "half"
    start(tune_config(finished_run, steps=6), out, stop_after=3)
    _error(_invoke("tune", finished_run, "--out", out), f"continue it with `sieve tune --resume {out}`")
    result = _invoke("tune", "--resume", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("step   4/6  loss")  # continued after the checkpoint
    assert (out / "tuning.json").is_file()
