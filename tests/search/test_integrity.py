"""A run directory nobody can corrupt: one writer at a time, and a refused resume touches nothing."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sieve.cli import app
from sieve.config import to_dict
from sieve.export.masks import read_masks


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first(search_config, tmp_path):
    """A second search into a run another process is writing is refused naming that process, and
    leaves the first one's run untouched (the first is then stopped with SIGTERM, as a scheduler would)."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(to_dict(search_config(generations=500))))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "sieve.cli", "search", "--config", str(config), "--run-dir", str(run)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ((run / ".lock").exists() and (run / ".lock").read_text().strip()):
        assert first.poll() is None and time.time() < deadline, "the first search never took the lock"
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "sieve.cli", "search", "--config", str(config), "--seed", "1",
                             "--run-dir", str(run)], env=env, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first search ended before the second was checked"
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"is in use by PID {first.pid} on host {socket.gethostname()}" in " ".join(second.stderr.split())
    assert "Traceback" not in second.stderr
    while not (run / "history.jsonl").exists():
        assert first.poll() is None and time.time() < deadline, "the first search wrote no generation"
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out.decode()[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 0
    history = [json.loads(line)["generation"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert history == list(range(len(history))) and history
    assert (run / ".lock").read_text() == ""  # released


def test_an_edited_config_is_refused_before_anything_is_touched(copy_run, tmp_path):
    run = copy_run()
    masks_before = tmp_path / "before.safetensors"
    assert _invoke("export", run, "--to", "masks", "--out", masks_before, "--device", "cpu").exit_code == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["calibration"]["general_blocks"] += 1
    config["seed"] = 7
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    snapshot = _snapshot(run)
    result = _invoke("search", "--resume", run, "--generations", 4)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "calibration.general_blocks: run has 4, now 5" in text and "seed: run has 0, now 7" in text
    assert _snapshot(run) == snapshot
    masks_after = tmp_path / "after.safetensors"
    assert _invoke("export", run, "--to", "masks", "--out", masks_after, "--device", "cpu").exit_code == 0
    before, after = read_masks(masks_before)[0], read_masks(masks_after)[0]
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)


def test_a_deleted_checkpoint_is_refused_not_restarted(copy_run):
    run = copy_run()
    (run / "checkpoint" / "state.json").unlink()
    snapshot = _snapshot(run)
    result = _invoke("search", "--resume", run, "--generations", 4)
    assert result.exit_code == 2 and "has history.jsonl but no checkpoint" in result.output
    assert _snapshot(run) == snapshot


def test_changed_model_weights_are_refused_before_statistics(search_config, run_search, tiny_model_dir, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    run = tmp_path / "run"
    run_search(search_config(model=str(model_dir), generations=1), run, report=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    model.save_pretrained(model_dir)  # same path: the config's identity is unchanged
    snapshot = _snapshot(run)
    result = _invoke("search", "--resume", run, "--generations", 3)
    assert result.exit_code == 2, result.output
    assert "the model's weights changed since the run started" in " ".join(result.output.split())
    assert _snapshot(run) == snapshot
