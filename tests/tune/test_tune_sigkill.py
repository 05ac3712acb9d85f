"""A real ``sieve tune`` process killed with SIGKILL at a random point after its first checkpoint,
then ``sieve tune --resume``: the adapters, the merged weights and the history are the uninterrupted
run's, bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sieve.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(finished_run, tuned_run, tiny_tune_fields, tmp_path):
    whole, _ = tuned_run  # the same settings, tuned in-process without interruption
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tune_fields))
    killed = tmp_path / "killed"
    victim = _cli("tune", str(finished_run), "--out", str(killed), "--config", str(config))
    state = killed / "checkpoint" / "state.safetensors"
    deadline = time.monotonic() + 300
    while not state.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert state.exists(), (victim.communicate()[0] or b"").decode()[-2000:]
    time.sleep(random.Random(time.time_ns()).uniform(0.0, 0.05))  # anywhere in the steps after it
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the tuning finished before it could be killed"
    assert not (killed / "tuning.json").exists()
    resumed = _cli("tune", "--resume", str(killed))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out.decode()[-2000:]
    for name in ("adapters/best.safetensors", "model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (p / "history.jsonl").open()]
            for p in (whole, killed)]
    assert rows[0] == rows[1]
    assert json.loads((killed / "tuning.json").read_text())["best_step"] == json.loads(
        (whole / "tuning.json").read_text())["best_step"]
