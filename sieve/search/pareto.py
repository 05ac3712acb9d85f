"""Pareto mode: the largest budget whose task accuracy stays within ``tolerance`` of dense.

``sieve search --tolerance 0.02`` answers "how many parameters does this task need?" by bisection
over the budget. Each probe is a full search (same settings, its own resumable run directory
``RUN/budget-0.xxx/``), warm-started from the best allocation found at the nearest feasible budget
(rescaled to the new budget and repaired), and is judged by its test accuracy against the dense
model's, as the question asks. Every probe is recorded in ``RUN/frontier.json`` (budget, test
accuracy, NLL, perplexity, feasible), which is the reported frontier; a rerun with the same
directory resumes finished and unfinished probes.

Note: choosing the budget on the test split makes the answer's own test accuracy optimistic;
compare with a fresh split when the margin is thin.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from sieve.config import SearchConfig
from sieve.io import read_json, write_json
from sieve.search.run import SearchRun, open_run

log = logging.getLogger(__name__)

LOW, HIGH = 0.05, 0.9


def _probe(config: SearchConfig, directory: Path, budget: float, warm: dict[str, float] | None) -> dict[str, Any]:
    sub = directory / f"budget-{budget:.3f}"
    cfg = dataclasses.replace(config, budget=budget, tolerance=None)
    resume = (sub / "config.yaml").exists()
    cfg, sub = open_run(None if resume else cfg, sub, resume=resume)
    outcome = SearchRun(cfg, sub).execute(extra_seeds=[warm] if warm else None)
    rows = {r["method"]: r for r in outcome["table"]}
    best, dense = rows["sieve-search"], rows["dense"]
    allocation = read_json(sub / "best_allocation.json")["modules"]
    return {
        "budget": budget,
        "task_acc": best["task_acc"],
        "task_nll": best["task_nll"],
        "wiki_ppl": best["wiki_ppl"],
        "dense_acc": dense["task_acc"],
        "drop": dense["task_acc"] - best["task_acc"],
        "run_dir": str(sub),
        "allocation": allocation,
    }


def run_pareto(config: SearchConfig, directory: Path, *, steps: int = 4, console=None) -> dict[str, Any]:
    """Bisect the budget in ``[LOW, HIGH]``; return the frontier and the largest feasible budget."""
    tolerance = float(config.tolerance)
    low, high = LOW, HIGH
    frontier: list[dict[str, Any]] = []
    best_feasible: dict[str, Any] | None = None
    for _ in range(steps):
        budget = round((low + high) / 2, 3)
        warm = None
        if best_feasible is not None:
            scale = budget / best_feasible["budget"]
            warm = {k: min(0.95, v * scale) for k, v in best_feasible["allocation"].items()}
        point = _probe(config, directory, budget, warm)
        point["feasible"] = point["drop"] <= tolerance
        frontier.append(point)
        if console is not None:
            console.print(
                f"budget {budget:.3f}: test acc {point['task_acc']:.3f} (dense {point['dense_acc']:.3f}) "
                f"→ {'within' if point['feasible'] else 'outside'} tolerance {tolerance}"
            )
        if point["feasible"]:
            low, best_feasible = budget, point
        else:
            high = budget
        write_json(directory / "frontier.json", _summary(frontier, best_feasible, tolerance))
    return _summary(frontier, best_feasible, tolerance)


def _summary(frontier: list[dict[str, Any]], best: dict[str, Any] | None, tolerance: float) -> dict[str, Any]:
    points = [{k: v for k, v in p.items() if k != "allocation"} for p in sorted(frontier, key=lambda p: p["budget"])]
    return {
        "tolerance": tolerance,
        "largest_budget": best["budget"] if best else None,
        "answer_run": best["run_dir"] if best else None,
        "frontier": points,
    }
