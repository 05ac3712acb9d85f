"""A tuning stopped after a checkpoint and resumed gives the uninterrupted run's adapters bit for bit."""

import json

import torch
from safetensors.torch import load_file

from sieve.tune.run import resume, start


def test_resume_is_bit_identical(finished_run, tune_config, tuned_run, tmp_path):
    whole, summary = tuned_run
    parted = tmp_path / "parted"
    first = start(tune_config(finished_run), parted, stop_after=3)
    assert first == {"interrupted": True, "step": 3, "out": str(parted)}
    assert (parted / "checkpoint" / "state.safetensors").is_file() and not (parted / "tuning.json").exists()
    # a kill after the checkpoint at step 3 may leave a history line of step 4 behind: the resume drops it
    with open(parted / "history.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
    again = resume(parted)
    for name in ("adapters/best.safetensors", "model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(parted / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (p / "history.jsonl").open()]
            for p in (whole, parted)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == list(range(13))
    assert again["best_step"] == summary["best_step"] and again["after"] == summary["after"]
    assert not (parted / "checkpoint").exists()
