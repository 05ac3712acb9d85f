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


def test_runs_given_stored_statistics_hold_one_copy(llama, tmp_path):
    """Statistics already in a store are hard-linked into each run's store (same inode, same bytes),
    and a store the cache cannot link to gets a copy that reads back identical."""
    import os

    from sieve.search.rundir import RunStatsStore

    stats = _stats(llama, CacheStore(tmp_path / "cache"))
    cached = stats.files["task"]
    for run in ("a", "b"):
        stats.save_to(RunStatsStore(tmp_path / run / "stats"))
    linked = [tmp_path / run / "stats" / "task.safetensors" for run in ("a", "b")]
    assert {os.stat(p).st_ino for p in linked} == {os.stat(cached).st_ino}
    assert os.stat(cached).st_nlink == 3
    unstored = _stats(llama)  # computed in memory: the first store gets a copy, the next links to it
    assert unstored.files == {}
    mats = find_matrices(llama)
    unstored.only(("task",), mats).save_to(RunStatsStore(tmp_path / "c"))  # what each Pareto probe does
    unstored.only(("task",), mats).save_to(RunStatsStore(tmp_path / "d"))
    assert os.stat(tmp_path / "c" / "task.safetensors").st_ino == os.stat(tmp_path / "d" / "task.safetensors").st_ino
    back = read_stored(RunStatsStore(tmp_path / "d"), unstored.fingerprints, mats, hessian=False)
    for m in mats:
        assert torch.equal(back.per_matrix[m.name].task.sq_sum, unstored.per_matrix[m.name].task.sq_sum)


def test_only_keeps_the_named_sources(llama):
    stats = _stats(llama)
    mats = find_matrices(llama)
    none = stats.only((), mats)
    assert none.fingerprints == {} and none.by_source == {}
    assert all(s.general is None and s.task is None for s in none.per_matrix.values())
    kept = stats.only(("task", "general"), mats)
    assert kept.fingerprints == stats.fingerprints and set(kept.per_matrix) == {m.name for m in mats}
