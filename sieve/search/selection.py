"""Choosing the result on held-out documents: a long search's best may fit its validation split.

Measured (SmolLM2-135M, budget 0.5, one H200, ``benchmarks/generations.py``): from generation 30 to
300 the best candidate's validation NLL fell from 0.506 to 0.397 while its test accuracy stayed at
0.756–0.758 and its test NLL moved from 0.516 to 0.495; on Qwen2.5-Coder-1.5B from generation 30 to
150 validation fell 0.252 → 0.226 and test NLL rose 0.342 → 0.346. Selecting among many candidates
on a few hundred documents rewards what those documents happen to favour.

With ``selection_examples: N`` the task's validation pool gives N more documents that the search
never scores (:class:`~sieve.data.splits.TaskSplits` ``selection``). After the search each
generation's best (``history.jsonl``, each distinct genome once) is scored on them by task NLL, and
the result is the one lowest there (ties: the earliest generation), i.e. early stopping chosen on
held-out documents rather than on the ones the search optimised. ``results.json`` gets

    selection = {examples, chosen_generation, last_generation,
                 chosen | last: {validation, selection, selection_acc}, dense: {selection, selection_acc},
                 per_generation: [{generation, validation, selection, selection_acc}]}

(``selection`` the task NLL on the held-out documents, ``selection_acc`` the accuracy there) so the
gap between the two splits is reported, not only the choice. ``--tolerance`` judges its probes on
these documents when there are any (:mod:`sieve.search.pareto`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sieve.data.splits import TaskSplits
from sieve.metrics.quality import EvalSettings, QualityProbe
from sieve.prune.pruner import ModelPruner
from sieve.search.curve import measure_generation_bests
from sieve.search.space import SearchSpace


def select_on_heldout(history: Sequence[Mapping[str, Any]], task: TaskSplits, tokenizer, settings: EvalSettings,
                      space: SearchSpace, pruner: ModelPruner, model) -> tuple[np.ndarray, dict[str, Any]]:
    """The generation best with the lowest task NLL on ``task.selection``, and the ``selection`` record."""
    probe = QualityProbe(tokenizer, dataclasses.replace(task, test=task.selection), None, settings)
    measured = measure_generation_bests(history, space, pruner, probe, model)
    rows = []
    for line in history:
        genome = tuple(int(g) for g in line["best_genome"])
        rows.append({"generation": line["generation"], "validation": line["best"],
                     "selection": measured[genome].task_nll, "selection_acc": measured[genome].task_acc,
                     "genome": genome})
    dense = probe.measure(model, space.matrices)
    chosen = min(rows, key=lambda r: (r["selection"], r["generation"]))
    last = rows[-1]
    keys = ("validation", "selection", "selection_acc")
    record = {
        "examples": len(task.selection), "chosen_generation": chosen["generation"],
        "last_generation": last["generation"],
        "chosen": {k: chosen[k] for k in keys}, "last": {k: last[k] for k in keys},
        "dense": {"selection": dense.task_nll, "selection_acc": dense.task_acc},
        "per_generation": [{k: r[k] for k in ("generation", *keys)} for r in rows],
    }
    return np.array(chosen["genome"]), record
