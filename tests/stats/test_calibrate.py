"""Statistics are fingerprinted by model, tokens and settings: reused exactly, never silently replaced."""

import pytest
import torch

from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.matrix import weights_hash
from sieve.stats import CalibrationStats
from sieve.stats.calibrate import CacheStore, CalibrationConfig, ensure_stats, read_stored


class Tok:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 150) for c in text]}


TEXTS = ["a task prompt", "another one, longer than the first"]


def _stats(model, store=None, texts=TEXTS, **cfg):
    mats = find_matrices(model)
    return ensure_stats(model, Tok(), mats, ("task",), weights_hash=weights_hash(mats),
                        cfg=CalibrationConfig(batch_size=2, **cfg), task_texts=texts, store=store)


def test_sequential_collection_equals_one_pass(llama):
    one, seq = _stats(llama), _stats(llama, sequential=True)
    for name, per in one.per_matrix.items():
        assert torch.allclose(per.task.sq_sum, seq.per_matrix[name].task.sq_sum, rtol=1e-5)
    assert one.fingerprints["task"] != seq.fingerprints["task"]  # the setting is part of the identity


def test_fingerprint_follows_tokens_and_weights(llama, tmp_path):
    store = CacheStore(tmp_path)
    first = _stats(llama, store)
    again = _stats(llama, store)
    assert again.fingerprints == first.fingerprints and again.seconds["task"] == 0.0  # reused, not recomputed
    assert _stats(llama, store, texts=TEXTS[::-1]).fingerprints != first.fingerprints
    with torch.no_grad():
        find_matrices(llama)[0].weight[0, 0] += 1.0
    assert _stats(llama, store).fingerprints != first.fingerprints
    assert len(list(tmp_path.glob("task-*.safetensors"))) == 3


def test_a_strict_store_refuses_other_statistics_and_leaves_them(llama, tmp_path):
    from sieve.search.rundir import RunStatsStore

    store = RunStatsStore(tmp_path)
    first = _stats(llama, store)
    path = tmp_path / "task.safetensors"
    before = path.read_bytes()
    with pytest.raises(SieveError, match="holds statistics with fingerprint .* but this run needs"):
        _stats(llama, store, texts=TEXTS[:1])
    assert path.read_bytes() == before
    mats = find_matrices(llama)
    stored = read_stored(store, first.fingerprints, mats, hessian=False)
    assert torch.equal(stored.per_matrix[mats[0].name].task.sq_sum, first.per_matrix[mats[0].name].task.sq_sum)
    with pytest.raises(SieveError, match="have fingerprint .* but"):
        read_stored(store, {"task": "0" * 16}, mats, hessian=False)


def test_damaged_statistics_are_one_line(tmp_path):
    bad = tmp_path / "task.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(SieveError, match="statistics file .* is damaged"):
        CalibrationStats.load(bad)
