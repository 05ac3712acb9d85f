"""Does a longer search pay? Every generation's best candidate, measured on the test split.

A long search selects among many candidates on a few hundred validation examples, so its best may
come to fit the validation split rather than the task. With ``evaluation: {curve: true}`` the run
measures the best candidate of each generation (``history.jsonl``'s ``best_genome``; each distinct
genome once) on the test split after the search, and writes, per generation,

    {generation, validation_fitness, test_acc, test_nll, changed}

into ``results.json`` (``curve``) for ``sieve report``. ``changed`` marks the generations whose best
differs from the previous one. The test split is read only for this report, after the search:
nothing here feeds back into the choice of the best candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sieve.metrics.quality import QualityProbe, QualityReport
from sieve.prune.pruner import ModelPruner
from sieve.search.space import SearchSpace


def measure_generation_bests(history: Sequence[Mapping[str, Any]], space: SearchSpace, pruner: ModelPruner,
                             probe: QualityProbe, model) -> dict[tuple[int, ...], QualityReport]:
    """``probe``'s report of every distinct ``best_genome`` in ``history``, each measured once; the
    model is dense again afterwards."""
    measured: dict[tuple[int, ...], QualityReport] = {}
    for line in history:
        genome = tuple(int(g) for g in line["best_genome"])
        if genome not in measured:
            pruner.apply(space.allocation(np.array(genome)))
            measured[genome] = probe.measure(model, space.matrices)
    pruner.restore()
    return measured


def generation_curve(history: Sequence[Mapping[str, Any]], space: SearchSpace, pruner: ModelPruner,
                     probe: QualityProbe, model) -> list[dict[str, Any]]:
    """One row per history line; the task test metrics of that generation's best genome."""
    measured = measure_generation_bests(history, space, pruner, probe, model)
    rows = []
    previous = None
    for line in history:
        genome = tuple(int(g) for g in line["best_genome"])
        report = measured[genome]
        rows.append({"generation": line["generation"], "validation_fitness": line["best"], "test_acc": report.task_acc,
                     "test_nll": report.task_nll, "changed": genome != previous})
        previous = genome
    return rows
