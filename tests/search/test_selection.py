"""``selection_examples``: held-out validation-pool documents choose among the generations' bests."""

from __future__ import annotations

import json

import pytest

from sieve.config import validate
from sieve.data.splits import SplitSpec, load_task
from sieve.errors import SieveError
from sieve.prune.allocation import AllocationFile
from sieve.search.config import SearchConfig
from sieve.search.rundir import RunDir


def _texts(examples) -> set[str]:
    return {ex.context for ex in examples}


def test_selection_split_is_disjoint_and_leaves_validation_unchanged(tiny_task):
    plain = load_task(str(tiny_task), SplitSpec(max_validation=12))
    task = load_task(str(tiny_task), SplitSpec(max_validation=12, max_selection=8))
    assert task.validation == plain.validation and task.test == plain.test and task.calibration == plain.calibration
    assert len(task.selection) == 8 and plain.selection == ()
    selection = _texts(task.selection)
    assert len(selection) == 8
    assert not selection & (_texts(task.validation) | _texts(task.test) | _texts(task.calibration))
    assert task.digest() != plain.digest()
    assert load_task(str(tiny_task), SplitSpec(max_validation=12, max_selection=8)).selection == task.selection
    with pytest.raises(SieveError, match="selection_examples=13 needs that many validation documents beyond the 12"):
        load_task(str(tiny_task), SplitSpec(max_validation=12, max_selection=13))


def test_search_result_is_the_generation_best_lowest_on_held_out_documents(search_config, run_search, tmp_path):
    config = search_config(generations=4, selection_examples=8)
    outcome = run_search(config, tmp_path / "run", report=True)
    selection = outcome["selection"]
    history = RunDir(tmp_path / "run").history()
    per_generation = selection["per_generation"]
    assert [r["generation"] for r in per_generation] == [h["generation"] for h in history]
    assert [r["validation"] for r in per_generation] == [h["best"] for h in history]
    chosen = min(per_generation, key=lambda r: (r["selection"], r["generation"]))
    assert selection["chosen_generation"] == chosen["generation"] and selection["examples"] == 8
    assert selection["last"]["validation"] == history[-1]["best"] == min(h["best"] for h in history)
    genome = next(h["best_genome"] for h in history if h["generation"] == chosen["generation"])
    assert outcome["best_genome"] == genome and outcome["best_fitness"] == chosen["validation"]
    saved = AllocationFile.read(tmp_path / "run" / "best_allocation.json")
    assert saved.generation == chosen["generation"]
    same = {tuple(h["best_genome"]) for h in history}
    values = {}
    for h, r in zip(history, per_generation):
        values.setdefault(tuple(h["best_genome"]), set()).add(r["selection"])
    assert len(same) == len(values) and all(len(v) == 1 for v in values.values())  # one score per genome
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["selection"] == selection


def test_selection_needs_a_task_fitness(search_config):
    with pytest.raises(Exception, match="general_kl fitness reads no task documents"):
        search_config(selection_examples=8, fitness="general_kl")
    assert validate(SearchConfig, {"budget": 0.5}).selection_examples == 0
