"""Does an overnight search pay? One long search per seed, every generation's best on the test split.

    python benchmarks/generations.py [--model smollm2-135m] [--task rotten_tomatoes] [--generations 300]
                                     [--checkpoints 30,100,300] [--seeds 0] [--space per_matrix] [--budget 0.5]
                                     [--selection-examples 256] [--patience 20] [--search-config FILE]

The gpu preset with ``evaluation: {curve: true}``: after the search each generation's best candidate
is scored on the test split (:mod:`sieve.search.curve`). ``generations`` only stops the loop (it is
not part of a run's identity), so the first 30 generations of a 300-generation run *are* the
30-generation search with the same seed; the summary reads the 30 / 100 / 300 rows off one run.
``--selection-examples N`` holds N more validation-pool documents out of the search and lets them
choose the result among the generations' bests (:mod:`sieve.search.selection`); the run's
``selected`` row gives that choice's test accuracy beside the last generation's. ``--patience P``
also stops the loop once P generations pass without a lower held-out value (:mod:`sieve.search.loop`);
the run's ``early_stopping`` says where. ``--search-config`` overrides the gpu preset (e.g. the CPU
settings, ``benchmarks/cpu_search.yaml``).
Writes ``benchmarks/results/generations-<date>-<device>[-TAG].json``; ``--smoke`` runs a tiny model.
``--plot OUT.png RESULT.json ...`` draws those results' curves instead (one panel per run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, provenance, smoke_inputs, write_result  # noqa: E402
from quality import GPU_SEARCH, SMOKE_SEARCH  # noqa: E402

from sieve.config import load_yaml, validate  # noqa: E402
from sieve.search.config import SearchConfig  # noqa: E402
from sieve.search.run import SearchRun  # noqa: E402
from sieve.search.rundir import RunDir  # noqa: E402

log = logging.getLogger("benchmarks.generations")


def summary(curve: list[dict[str, Any]], checkpoints: list[int], dense_acc: float) -> list[dict[str, Any]]:
    """The best after each checkpoint generation: its validation fitness and test accuracy."""
    rows = []
    for g in checkpoints:
        upto = [r for r in curve if r["generation"] <= g]
        if upto:
            last = upto[-1]
            rows.append({"generations": g, "validation_fitness": last["validation_fitness"],
                         "test_acc": last["test_acc"], "test_nll": last["test_nll"], "dense_acc": dense_acc,
                         "best_changes": sum(r["changed"] for r in upto)})
    return rows


def plot(out: Path, results: list[Path]) -> Path:
    """Validation fitness (left axis) and test accuracy (right axis) of every generation's best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bodies = [json.loads(path.read_text()) for path in results]
    panels = [(body, run) for body in bodies for run in body["runs"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (body, run) in zip(axes[0], panels):
        gens = [r["generation"] for r in run["curve"]]
        ax.plot(gens, [r["validation_fitness"] for r in run["curve"]], color="#1f77b4", label="validation NLL (searched)")
        if "selection" in run:
            sel = run["selection"]["per_generation"]
            ax.plot([r["generation"] for r in sel], [r["selection"] for r in sel], color="#ff7f0e",
                    label=f"held-out NLL ({run['selection']['examples']} docs)")
        ax.plot(gens, [r["test_nll"] for r in run["curve"]], color="#7f7f7f", linestyle="--", label="test NLL")
        ax.set_xlabel("generation")
        ax.set_ylabel("task NLL of the best (lower is better)")
        right = ax.twinx()
        right.plot(gens, [r["test_acc"] for r in run["curve"]], color="#2ca02c", label="test accuracy")
        dense = next(r["task_acc"] for r in run["table"] if r["method"] == "dense")
        right.axhline(dense, color="#2ca02c", linestyle=":", linewidth=1, label=f"dense test accuracy {dense:.3f}")
        right.set_ylabel("test accuracy")
        model = body["inputs"]["model"]
        ax.set_title(f"{model}, {body['space']} at {body['budget']}, seed {run['seed']} ({body['commit']})", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
        ax.legend(handles, labels, fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--general", default="wikipedia")
    p.add_argument("--space", default="per_matrix")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--generations", type=int, default=300)
    p.add_argument("--checkpoints", default="30,100,300")
    p.add_argument("--seeds", default="0")
    p.add_argument("--selection-examples", type=int, default=0)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--search-config", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--plot", nargs="+", type=Path, metavar=("OUT.png", "RESULT.json"))
    args = p.parse_args(argv)
    if args.plot:
        return plot(args.plot[0], args.plot[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    inputs = smoke_inputs(Path(tempfile.mkdtemp(prefix="sieve-smoke-"))) if args.smoke else {
        "model": args.model, "task": args.task, "general": args.general}
    base = dict(SMOKE_SEARCH if args.smoke else GPU_SEARCH)
    if args.search_config:
        base.update(load_yaml(args.search_config))
    evaluation = {**base.get("evaluation", {}), "curve": True}
    checkpoints = [int(g) for g in args.checkpoints.split(",")]
    body: dict[str, Any] = {**provenance(), "command": " ".join(["benchmarks/generations.py", *argv]),
                            "inputs": inputs, "space": args.space, "budget": args.budget, "runs": []}
    tag = args.tag or ("smoke" if args.smoke else "")
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = validate(SearchConfig, {**base, **inputs, "evaluation": evaluation, "space": args.space,
                                      "budget": args.budget, "generations": args.generations, "seed": seed,
                                      "selection_examples": args.selection_examples, "patience": args.patience,
                                      "device": args.device})
        run = RunDir(Path(args.runs) / f"generations-s{seed}-{int(time.time())}")
        outcome = SearchRun(run, cfg).execute(report=True)
        dense = next(r for r in outcome["table"] if r["method"] == "dense")
        body["runs"].append({"seed": seed, "run": str(run.path), "search_seconds": outcome["search_seconds"],
                             "phases": outcome["phases"], "table": outcome["table"], "curve": outcome["curve"],
                             "generations_done": outcome["generations_done"],
                             "summary": summary(outcome["curve"], checkpoints, dense["task_acc"])})
        if "early_stopping" in outcome:
            body["runs"][-1]["early_stopping"] = outcome["early_stopping"]
        if "selection" in outcome:
            sel = outcome["selection"]
            at = {r["generation"]: r for r in outcome["curve"]}
            body["runs"][-1]["selection"] = sel
            body["runs"][-1]["selected"] = {
                "chosen_generation": sel["chosen_generation"], "last_generation": sel["last_generation"],
                "chosen_test_acc": at[sel["chosen_generation"]]["test_acc"],
                "chosen_test_nll": at[sel["chosen_generation"]]["test_nll"],
                "last_test_acc": at[sel["last_generation"]]["test_acc"],
                "last_test_nll": at[sel["last_generation"]]["test_nll"], **{k: sel[k] for k in ("chosen", "last")}}
            log.warning("seed %d selected generation %d on %d held-out documents: %s", seed, sel["chosen_generation"],
                        sel["examples"], body["runs"][-1]["selected"])
        write_result("generations", body, args.out_dir, tag)
        for row in body["runs"][-1]["summary"]:
            log.warning("seed %d after %4d generations: validation %.4f  test acc %.3f  (dense %.3f, %d changes)",
                        seed, row["generations"], row["validation_fitness"], row["test_acc"], row["dense_acc"],
                        row["best_changes"])
    path = write_result("generations", body, args.out_dir, tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
