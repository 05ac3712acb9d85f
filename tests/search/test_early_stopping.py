"""``patience``: the loop stops once the generation's best stops improving on held-out documents."""

from __future__ import annotations

import json

import pytest

from sieve.search.rundir import RunDir


def _first_stop(values: list[float], patience: int) -> int | None:
    """The generation early stopping ends at, recomputed from the recorded held-out values."""
    best, at = None, 0
    for generation, value in enumerate(values):
        if best is None or value < best:
            best, at = value, generation
        if generation - at >= patience:
            return generation
    return None


def test_patience_stops_where_the_held_out_values_say_and_changes_nothing_before(search_config, run_search, tmp_path):
    """Same seed, same documents: with patience the loop records the same generations as without,
    plus each best's held-out value, and ends at the first generation ``patience`` past the lowest."""
    plain = run_search(search_config(generations=12, selection_examples=8), tmp_path / "plain", report=False)
    stopped = run_search(search_config(generations=12, selection_examples=8, patience=2), tmp_path / "stop",
                         report=False)
    a, b = RunDir(tmp_path / "plain").history(), RunDir(tmp_path / "stop").history()
    values = [h["selection"] for h in b]
    end = _first_stop(values, 2)
    assert end is not None and end < 12, values  # the tiny search does stop early
    assert stopped["generations_done"] == end == b[-1]["generation"] and len(b) == end + 1
    assert [(h["best"], h["best_genome"]) for h in b] == [(h["best"], h["best_genome"]) for h in a[: end + 1]]
    assert "selection" not in a[0]
    record = stopped["early_stopping"]
    assert record == {"patience": 2, "stopped": True, "best_generation": values.index(min(values)),
                      "best_selection": min(values)}
    assert "early_stopping" not in plain
    assert json.loads((tmp_path / "stop" / "results.json").read_text())["early_stopping"] == record
    chosen = stopped["selection"]["chosen_generation"]  # the result is still chosen on the held-out documents
    assert chosen <= end and stopped["best_genome"] == b[chosen]["best_genome"]


def test_early_stopping_resumes_to_the_uninterrupted_stop(search_config, run_search, tmp_path):
    full = run_search(search_config(generations=12, selection_examples=8, patience=2), tmp_path / "full",
                      report=False)
    run_search(search_config(generations=1, selection_examples=8, patience=2), tmp_path / "part", report=False)
    resumed = run_search(None, tmp_path / "part", overrides={"generations": 12}, report=False)
    assert resumed["generations_done"] == full["generations_done"]
    assert resumed["best_genome"] == full["best_genome"] and resumed["early_stopping"] == full["early_stopping"]
    timing = {"seconds", "evals_per_s"}
    a, b = ([{k: v for k, v in h.items() if k not in timing} for h in RunDir(tmp_path / r).history()] for r in ("part", "full"))
    assert a == b and all("selection" in h for h in a)


def test_patience_needs_held_out_documents_and_a_per_document_fitness(search_config):
    with pytest.raises(Exception, match="set selection_examples too"):
        search_config(patience=3)
    with pytest.raises(Exception, match="the kl fitness measures batches of validation documents"):
        search_config(patience=3, selection_examples=8, fitness="kl")
