"""``sieve report RUN``: plots and a Markdown summary of a search run, in ``RUN/report/``.

Reads only the run directory (no model is loaded):

* ``fitness.png`` — best and median fitness of each generation (``history.jsonl``), with the
  uniform and OWL seeds' full-fidelity fitness (``results.json``) as reference lines;
* ``allocation.png`` — heatmap of the best allocation's sparsity, matrix kinds × blocks
  (``best_allocation.json``). Architecture-agnostic: a module name's block index is its first
  integer path component and its kind everything after it (``model.layers.3.mlp.up_proj`` →
  block 3, kind ``mlp.up_proj``; ``transformer.h.0.attn.c_attn`` → 0, ``attn.c_attn``), which is
  how :func:`sieve.models.arch.find_matrices` names matrices;
* ``quality.png`` — task accuracy and general perplexity of dense / uniform / OWL / best found
  (``results.json`` ``table``), measured on the held-out test split;
* ``report.md`` — the config summary, the result table and the three plots.

Pure parts (:func:`parse_module`, :func:`sparsity_grid`, :func:`markdown`) are separate from the
plotting shell; figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state,
no display) and every file is written atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sieve.errors import SieveError
from sieve.io import atomic_write, write_text
from sieve.search.config import SearchConfig
from sieve.search.execution import ExecutionPlan
from sieve.search.loop import ELIMINATED
from sieve.search.rundir import RunDir

log = logging.getLogger(__name__)

FITNESS_LABELS = {
    "task_nll": "task NLL of the gold answer (nats/example, choice-normalised)",
    "task_acc": "1 − task accuracy (fraction)",
    "kl": "KL(dense ‖ pruned) on task text (nats/token)",
    "general_kl": "KL(dense ‖ pruned) on general text (nats/token)",
}
COLORS = {"dense": "#7f7f7f", "uniform": "#1f77b4", "owl": "#ff7f0e", "sieve": "#2ca02c"}


def parse_module(name: str) -> tuple[int, str] | None:
    """``(block, kind)`` of a module name: the first integer path component and what follows it."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            kind = ".".join(parts[i + 1:])
            return (int(part), kind) if kind else None
    return None


@dataclass(frozen=True)
class SparsityGrid:
    """Fraction of parameters given up per (kind, block) — zeros or factors; ``NaN`` where the
    allocation names no such matrix (or only its rank is known); ``ranks`` for factorised cells."""

    kinds: list[str]
    blocks: list[int]
    values: np.ndarray  # (len(kinds), len(blocks))
    ranks: dict[tuple[int, int], int] | None = None  # (kind index, block index) → rank


def sparsity_grid(modules: Mapping[str, float], ranks: Mapping[str, int] | None = None) -> SparsityGrid:
    cells: dict[tuple[int, str], float] = {}
    kinds: list[str] = []
    ranks = dict(ranks or {})
    for name in ranks:
        modules = {**modules, name: modules.get(name, float("nan"))}
    for name, s in modules.items():
        parsed = parse_module(name)
        if parsed is None:
            log.warning("cannot place module %s in the block × kind grid; skipped", name)
            continue
        block, kind = parsed
        cells[(block, kind)] = float(s)
        if kind not in kinds:
            kinds.append(kind)  # first-seen order = the model's module order
    if not cells:
        raise SieveError("the best allocation names no module of the form ...<block>.<kind>")
    blocks = sorted({b for b, _ in cells})
    values = np.full((len(kinds), len(blocks)), np.nan)
    for (block, kind), s in cells.items():
        values[kinds.index(kind), blocks.index(block)] = s
    at = {}
    for name, rank in ranks.items():
        parsed = parse_module(name)
        if parsed is not None:
            at[(kinds.index(parsed[1]), blocks.index(parsed[0]))] = int(rank)
    return SparsityGrid(kinds, blocks, values, at)


#: what the plots read from each row: history.jsonl lines and results.json ``table`` rows
HISTORY_FIELDS = {"generation": int, "best": float, "median": float}
TABLE_FIELDS = {"method": str, "sparsity": float, "task_acc": float, "wiki_ppl": float}


def check_rows(rows: Sequence[Any], fields: Mapping[str, type], where: str, unit: str) -> None:
    """Refuse a row that is not an object, lacks a field, or holds a field of the wrong type,
    naming the file, the row (``unit`` 1-based: a line, a table row) and the field."""
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SieveError(f"{where} {unit} {i + 1} is not a JSON object")
        for field, kind in fields.items():
            value = row.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                problem = "lacks the field" if field not in row else "has a wrong type for"
                raise SieveError(f"{where} {unit} {i + 1} {problem} {field!r} ({'a number' if kind is float else kind.__name__} "
                                 "expected); the file is damaged")


def _family(method: str) -> str:
    for key in ("dense", "uniform", "owl"):
        if method.startswith(key):
            return key
    return "sieve"


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically (every report figure, search's and tune's)."""
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=130, bbox_inches="tight"))


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure with constrained layout, made without pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_fitness(history: Sequence[Mapping[str, Any]], results: Mapping[str, Any], config: SearchConfig, path: Path) -> Path:
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    gens = [h["generation"] for h in history]
    # A median that lands on a candidate eliminated at an early fidelity stage (fitness
    # ELIMINATED + value) is not a validation fitness: leave that point out.
    medians = [h["median"] if h["median"] < ELIMINATED else float("nan") for h in history]
    ax.plot(gens, [h["best"] for h in history], marker="o", color=COLORS["sieve"], label="best of population")
    ax.plot(gens, medians, marker="s", linestyle="--", color="#9467bd", label="median of population")
    seeds = results.get("baseline_fitness") or {"uniform": results.get("uniform_fitness"), "owl": results.get("owl_fitness")}
    palette = [COLORS["uniform"], COLORS["owl"], "#8c564b", "#e377c2"]
    for (label, value), color in zip(seeds.items(), palette):
        if value is not None:
            ax.axhline(value, color=color, linestyle=":", linewidth=1.5, label=f"{label} seed")
    fitness = config.fitness.name
    ylabel = FITNESS_LABELS.get(fitness, fitness)
    if config.general_weight:
        ylabel += f" + {config.general_weight:g}·general KL"
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(f"Search progress: {fitness} on the validation split (lower is better)")
    if len(gens) <= 30:
        ax.set_xticks(gens)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    curve = results.get("curve")
    if curve:
        test_ax = ax.twinx()
        test_ax.plot([r["generation"] for r in curve], [r["test_acc"] for r in curve], color="#2ca02c",
                     linewidth=1.5, label="test accuracy of the best (right axis)")
        test_ax.set_ylabel("test accuracy", fontsize=9)
        more_handles, more_labels = test_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best", fontsize=9)
    return save_png(fig, path)


def curve_lines(curve: Sequence[Mapping[str, Any]]) -> list[str]:
    """The generations at which the best candidate changed: validation fitness against test metrics."""
    lines = ["## Validation and test per generation", "",
             "Each generation's best candidate on the test split (`evaluation: {curve: true}`; reported only, "
             "never used to choose).", "",
             "| generation | validation fitness | test acc | test NLL |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['generation']} | {fmt_number(r['validation_fitness'], 4)} | {fmt_number(r['test_acc'], 3)} | "
              f"{fmt_number(r['test_nll'], 3)} |" for r in curve if r["changed"] or r is curve[-1]]
    return lines + [""]


def plot_allocation(grid: SparsityGrid, budget: float | None, achieved: float | None, path: Path) -> Path:
    n_kinds, n_blocks = grid.values.shape
    fig = new_figure(max(6.0, 1.2 + 0.36 * n_blocks), max(3.0, 1.4 + 0.45 * n_kinds))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid.values)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_blocks), [str(b) for b in grid.blocks], fontsize=8)
    ax.set_yticks(range(n_kinds), grid.kinds, fontsize=9)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("matrix kind")
    parts = []
    if budget is not None:
        parts.append(f"budget {budget:g}")
    if achieved is not None:
        parts.append(f"achieved {achieved:.3f}")
    ax.set_title("Best allocation: parameters given up per matrix" + (f" ({', '.join(parts)})" if parts else ""))
    ranks = grid.ranks or {}
    if n_blocks * n_kinds <= 120 or ranks:
        for i in range(n_kinds):
            for j in range(n_blocks):
                v = grid.values[i, j]
                text = f"r{ranks[(i, j)]}" if (i, j) in ranks else (f"{v:.2f}" if not math.isnan(v) else "")
                if text and (n_blocks * n_kinds <= 120 or (i, j) in ranks):
                    ax.text(j, i, text, ha="center", va="center", fontsize=6 if ranks else 7,
                            color="white" if math.isnan(v) or v < 0.6 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("fraction of parameters given up (r: factorised, rank r)")
    return save_png(fig, path)


def plot_quality(table: Sequence[Mapping[str, Any]], path: Path) -> Path:
    fig = new_figure(10.0, 4.4)
    labels = [f"{r['method']}\nsparsity {r['sparsity']:.3f}" for r in table]
    colors = [COLORS[_family(r["method"])] for r in table]
    x = np.arange(len(table))
    for k, (key, title, ylabel) in enumerate((
        ("task_acc", "Task accuracy (test split, higher is better)", "accuracy (fraction correct)"),
        ("wiki_ppl", "General-text perplexity (held out, lower is better)", "perplexity (exp of mean NLL per token)"),
    )):
        ax = fig.add_subplot(1, 2, k + 1)
        values = [float(r[key]) for r in table]
        bars = ax.bar(x, values, color=colors, edgecolor="black", linewidth=0.6)
        ax.bar_label(bars, labels=[f"{v:.3f}" if key == "task_acc" else f"{v:.1f}" for v in values], fontsize=8, padding=2)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        finite = [v for v in values if math.isfinite(v)]
        if key == "task_acc":
            ax.set_ylim(0, 1.08)
        elif finite and max(finite) / max(min(finite), 1e-9) > 20:
            ax.set_yscale("log")
            ax.set_ylabel(ylabel + ", log scale")
        elif finite:
            ax.set_ylim(0, max(finite) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Held-out quality: dense vs uniform vs OWL vs sieve search")
    return save_png(fig, path)


def fmt_number(value: Any, digits: int) -> str:
    """``value`` to ``digits`` decimals; ``–`` where it is missing or not finite (a table cell)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def markdown(run_dir: Path, config: SearchConfig, results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
             allocation: Mapping[str, Any], images: Mapping[str, str], failure: str | None = None,
             execution: ExecutionPlan | None = None) -> str:
    """``report.md``: config summary, how candidates were evaluated (the execution plan, and every
    preference that fell back), search summary with its phase times, result table and the plots
    (and why the run stopped, when it failed)."""
    lines = [f"# sieve search report: `{run_dir.name}`", ""]
    if failure is not None:
        lines += [f"**The run failed after generation {history[-1]['generation']}:** {failure}. Resume it with "
                  f"`sieve search --resume {run_dir}`.", ""]
    settings = {
        "model": config.model, "task": config.task, "general": config.general, "space": config.space.name,
        "budget": config.budget, "fitness": config.fitness.name, "general_weight": config.general_weight,
        "generations": config.generations, "offspring": config.offspring, "population": config.population,
        "seed": config.seed, "validation_examples": config.validation_examples, "stages": list(config.stages),
        "promote": list(config.promote), "device": config.device, "scoring method": config.space.scoring.describe() if config.space.scoring is not None else "none (nothing is scored)",
    }
    lines += ["## Configuration", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in settings.items()]
    lines.append("")
    if execution is not None:
        lines += ["## Execution", "", f"- {execution.describe()}"]
        lines += [f"- {note}" for note in execution.notes]
        if execution.demanded:
            lines.append(f"- typed on the command line: {', '.join('--' + d.replace('_', '-') for d in execution.demanded)}")
        lines.append("")
    lines += ["## Search", ""]
    if history:
        last = history[-1]
        lines.append(f"- generations finished: {last['generation']} (best fitness {fmt_number(last['best'], 4)}, "
                     f"median {fmt_number(last['median'], 4)})")
    if results:
        lines.append(f"- evaluations: {results.get('evaluations', '–')}, forward tokens: {results.get('tokens', 0):,}, "
                     f"search time: {fmt_number(results.get('search_seconds'), 0)} s")
        seeds = results.get("baseline_fitness") or {"uniform": results.get("uniform_fitness"),
                                                    "OWL": results.get("owl_fitness")}
        lines.append("- fitness of the seeds: " + ", ".join(f"{label} {fmt_number(value, 4)}" for label, value in seeds.items())
                     + f"; best {fmt_number(results.get('best_fitness'), 4)}")
        phases = results.get("phases")
        if phases:
            lines.append("- wall time by phase: " + ", ".join(f"{k.replace('_', ' ')} {fmt_number(v, 1)} s"
                                                             for k, v in phases.items()))
    lines.append(f"- best allocation: `best_allocation.json` (generation {allocation.get('generation', '–')}, achieved "
                 f"sparsity {fmt_number(allocation.get('achieved_sparsity'), 4)})")
    lines.append("")
    if "fitness" in images:
        lines += [f"![best and median fitness per generation]({images['fitness']})", ""]
    table = results.get("table") if results else None
    lines += ["## Held-out results", ""]
    if table:
        lines += ["| method | sparsity | task acc | task NLL | wiki PPL | test examples |", "|---|---:|---:|---:|---:|---:|"]
        for r in table:
            lines.append(f"| {r['method']} | {fmt_number(r['sparsity'], 4)} | {fmt_number(r['task_acc'], 3)} | {fmt_number(r['task_nll'], 3)} | "
                         f"{fmt_number(r['wiki_ppl'], 2)} | {r.get('n_test', '–')} |")
        lines.append("")
    else:
        lines += ["`results.json` has no result table yet (the search has not finished, or ran without the final report).", ""]
    if results and results.get("selection"):
        sel = results["selection"]
        lines += ["## Chosen on held-out documents", "",
                  f"- {sel['examples']} validation-pool documents the search never scored chose generation "
                  f"{sel['chosen_generation']}'s best: validation {fmt_number(sel['chosen']['validation'], 4)}, held-out "
                  f"{fmt_number(sel['chosen']['selection'], 4)}; the last generation's ({sel['last_generation']}): "
                  f"validation {fmt_number(sel['last']['validation'], 4)}, held-out {fmt_number(sel['last']['selection'], 4)}", ""]
        stop = results.get("early_stopping")
        if stop:
            lines[-1:-1] = [f"- early stopping (patience {stop['patience']}): "
                            + (f"stopped after generation {results.get('generations_done')}, the held-out best "
                               f"({fmt_number(stop['best_selection'], 4)}) being from generation {stop['best_generation']}"
                               if stop["stopped"] else "ran every generation (the held-out value kept improving)")]
    if results and results.get("curve"):
        lines += curve_lines(results["curve"])
    if "quality" in images:
        lines += [f"![task accuracy and perplexity per method]({images['quality']})", ""]
    if "allocation" in images:
        lines += ["## Best allocation", "", f"![sparsity per block and matrix kind]({images['allocation']})", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write ``RUN/report/{fitness,allocation,quality}.png`` and ``report.md``; return their paths."""
    run = RunDir.existing(run_dir)
    config = run.config()
    history = run.history()
    failure = run.failure()
    if not history:
        raise SieveError(f"run {run.path} has no finished generation yet "
                         + (f"(it failed: {failure})" if failure else "(history.jsonl is empty)"))
    check_rows(history, HISTORY_FIELDS, str(run.history_path), "line")
    allocation = run.best_allocation()
    results = run.results()
    check_rows(results.get("table") or [], TABLE_FIELDS, f"{run.results_path} table", "row")
    out = run.report_dir
    written: dict[str, Path] = {}
    written["fitness"] = plot_fitness(history, results, config, out / "fitness.png")
    per_module = results.get("per_module")
    if per_module:  # a finished run: every matrix's removed fraction, zeros or factors alike
        grid = sparsity_grid({n: v["removed"] for n, v in per_module.items()},
                             {n: v["rank"] for n, v in per_module.items() if v.get("rank") is not None})
    else:
        grid = sparsity_grid(allocation.modules, allocation.module_ranks)
    written["allocation"] = plot_allocation(grid, allocation.budget, allocation.achieved_sparsity, out / "allocation.png")
    if results.get("table"):
        written["quality"] = plot_quality(results["table"], out / "quality.png")
    images = {k: p.name for k, p in written.items()}
    body = allocation.model_dump(mode="json")
    written["markdown"] = write_text(out / "report.md", markdown(run.path, config, results, history, body, images,
                                                                failure, run.execution()))
    return written
