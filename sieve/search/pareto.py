"""Pareto mode: the largest budget whose task accuracy stays within ``tolerance`` of dense.

``sieve search --tolerance 0.02`` answers "how many parameters does this task need?" by bisection
over the budget. Each probe is a full search (same settings, its own resumable run directory
``RUN/budget-0.xxx/``), warm-started from the best allocation found at the nearest feasible budget
(rescaled to the new budget and repaired), and is judged by its test accuracy against the dense
model's, as the question asks. The model, the data and the calibration statistics are loaded once
and shared by every probe. Every probe is recorded in ``RUN/frontier.json`` (budget, test accuracy,
NLL, perplexity, feasible), which is the reported frontier; a rerun with the same directory resumes
finished and unfinished probes.

Choosing the budget on the test split makes the answer's own test accuracy optimistic. With
``selection_examples: N`` each probe is judged instead on the N held-out validation-pool documents
(its accuracy there against the dense model's, :mod:`sieve.search.selection`), and the test split
is only reported (``judged_on`` in every frontier point says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sieve.io import write_json
from sieve.search.config import SearchConfig
from sieve.search.run import SearchRun, search_statistics
from sieve.search.rundir import RunDir
from sieve.stats.calibrate import Statistics
from sieve.workspace import Workspace

log = logging.getLogger(__name__)

LOW, HIGH = 0.05, 0.9


class _Shared:
    """The workspace and statistics every probe reuses (opened on the first probe that needs them)."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.workspace: Workspace | None = None
        self.statistics: Statistics | None = None

    def get(self) -> tuple[Workspace, Statistics]:
        if self.workspace is None:
            from sieve.search.space import SearchSpace

            ws = self.config.open_workspace()
            self.statistics = search_statistics(self.config, ws, SearchSpace(self.config.space, ws.matrices))
            self.workspace = ws
        return self.workspace, self.statistics


def _probe(config: SearchConfig, run: RunDir, budget: float, warm: dict[str, float] | None,
           shared: _Shared) -> dict[str, Any]:
    sub = run.probe(budget)
    if RunDir.is_run(sub.path):
        search = SearchRun(sub, overrides={"generations": config.generations, "workers": config.workers})
    else:
        search = SearchRun(sub, config.model_copy(update={"budget": budget, "tolerance": None}))
    workspace, statistics = shared.get()
    outcome = search.execute(extra_seeds=[warm] if warm else None, workspace=workspace, statistics=statistics)
    rows = {r["method"]: r for r in outcome["table"]}
    best, dense = rows["sieve-search"], rows["dense"]
    point = {
        "budget": budget,
        "task_acc": best["task_acc"],
        "task_nll": best["task_nll"],
        "wiki_ppl": best["wiki_ppl"],
        "dense_acc": dense["task_acc"],
        "test_drop": dense["task_acc"] - best["task_acc"],
        "run_dir": str(sub.path),
        "allocation": sub.best_allocation().allocation.removed_fractions(workspace.matrices),
    }
    selection = outcome.get("selection")
    if selection is not None:
        point["selection_acc"] = selection["chosen"]["selection_acc"]
        point["dense_selection_acc"] = selection["dense"]["selection_acc"]
        point["drop"], point["judged_on"] = point["dense_selection_acc"] - point["selection_acc"], "selection"
    else:
        point["drop"], point["judged_on"] = point["test_drop"], "test"
    return point


def run_pareto(config: SearchConfig, run: RunDir, *, steps: int = 4,
               on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Bisect the budget in ``[LOW, HIGH]``; return the frontier and the largest feasible budget."""
    tolerance = float(config.tolerance)
    low, high = LOW, HIGH
    frontier: list[dict[str, Any]] = []
    best_feasible: dict[str, Any] | None = None
    shared = _Shared(config)
    with run.lock():
        if not run.config_path.exists():
            run.write_config(config)
        for _ in range(steps):
            budget = round((low + high) / 2, 3)
            warm = None
            if best_feasible is not None:
                scale = budget / best_feasible["budget"]
                warm = {k: min(0.95, v * scale) for k, v in best_feasible["allocation"].items()}
            point = _probe(config, run, budget, warm, shared)
            point["feasible"] = point["drop"] <= tolerance
            frontier.append(point)
            if on_point is not None:
                on_point(point)
            if point["feasible"]:
                low, best_feasible = budget, point
            else:
                high = budget
            write_json(run.frontier_path, _summary(frontier, best_feasible, tolerance))
    return _summary(frontier, best_feasible, tolerance)


def _summary(frontier: list[dict[str, Any]], best: dict[str, Any] | None, tolerance: float) -> dict[str, Any]:
    points = [{k: v for k, v in p.items() if k != "allocation"} for p in sorted(frontier, key=lambda p: p["budget"])]
    return {
        "tolerance": tolerance,
        "largest_budget": best["budget"] if best else None,
        "answer_run": best["run_dir"] if best else None,
        "frontier": points,
    }
