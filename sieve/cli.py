"""The ``sieve`` command line: a thin Typer layer over the library.

Each command turns its flags into one frozen config, calls the library, and prints a table. A
:class:`~sieve.errors.SieveError` becomes one line on stderr and exit status 2; Ctrl-C during a
search prints the resume command and exits 130.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sieve.errors import SieveError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="How many parameters does my task really need?")
console = Console()
err = Console(stderr=True)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TASK = "rotten_tomatoes"
DEFAULT_GENERAL = "wikipedia"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "datasets", "lm_eval", "ray"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def clean_errors(fn):
    """Run a command; user errors become one line and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SieveError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _quality_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("method", "sparsity", "task acc", "task NLL", "wiki PPL", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r["method"], f"{r['sparsity']:.3f}", f"{r['task_acc']:.3f}", f"{r['task_nll']:.3f}", f"{r['wiki_ppl']:.2f}",
            f"{r['seconds']:.1f}",
        )
    return table


@app.command()
@clean_errors
def prune(
    out: Annotated[Path, typer.Option(help="Folder for the pruned model (loadable with from_pretrained).")],
    model: Annotated[str, typer.Option(help="Built-in name, HF folder, .gguf file or hub name.")] = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="magnitude, wanda, sparsegpt or fused.")] = "fused",
    sparsity: Annotated[float, typer.Option(help="Uniform sparsity (fraction) of every prunable matrix.")] = 0.5,
    pattern: Annotated[str, typer.Option(help="unstructured or N:M (2:4, 4:8).")] = "unstructured",
    allocation: Annotated[Optional[Path], typer.Option(help="sieve.allocation/v1 JSON (or a run dir) instead of uniform.")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Masks from `sieve export --to masks`: apply W ⊙ M, no scoring.")] = None,
    task: Annotated[str, typer.Option(help="lm-eval task name or YAML (task calibration).")] = DEFAULT_TASK,
    general: Annotated[str, typer.Option(help="General calibration corpus.")] = DEFAULT_GENERAL,
    calibration: Annotated[str, typer.Option(help="Statistics source for wanda/sparsegpt: general or task.")] = "general",
    dtype: Annotated[str, typer.Option()] = "float32",
    device: Annotated[str, typer.Option()] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Prune a model (uniformly, by an allocation, or by exported masks) and save it as a plain HF folder."""
    _setup_logging(verbose)
    from sieve.config import MethodConfig, PruneConfig
    from sieve.prune.api import prune_model, prune_with_masks

    if masks is not None:
        if allocation is not None:
            raise SieveError("give --masks or --allocation, not both")
        summary = prune_with_masks(model, masks, out, dtype=dtype, device=device)
        console.print(f"applied {masks} to {summary['model']}: sparsity {summary['achieved_sparsity']:.4f} → {out}")
        return
    config = PruneConfig(
        model=model,
        task=task,
        general=general,
        method=MethodConfig(name=method, source=calibration),
        sparsity=sparsity,
        pattern=pattern,
        allocation=str(allocation) if allocation else None,
        dtype=dtype,
        device=device,
    )
    summary = prune_model(config, out)
    console.print(
        f"pruned {summary['model']} with {method} to sparsity {summary['achieved_sparsity']:.4f} "
        f"({summary['pattern']}) in {summary['seconds']:.1f}s → {out}"
    )


@app.command("eval")
@clean_errors
def eval_(
    model: Annotated[str, typer.Argument(help="Pruned folder, built-in name, HF folder, .gguf, run directory or allocation JSON.")] = DEFAULT_MODEL,
    task: Annotated[Optional[str], typer.Option(help="lm-eval task name or YAML (default: the run's, else rotten_tomatoes).")] = None,
    general: Annotated[Optional[str], typer.Option(help="General corpus for perplexity (default: the run's, else wikipedia).")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="Also run lm-eval's simple_evaluate on these tasks (comma-separated names or YAMLs).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="lm-eval: first N documents per task.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="'dense': also evaluate the dense model it was pruned from.")] = None,
    test_examples: Annotated[int, typer.Option(help="Cap on test examples (sieve's fast path).")] = 500,
    output: Annotated[Optional[Path], typer.Option("--json", help="Where to write the JSON results.")] = None,
    dtype: Annotated[str, typer.Option()] = "float32",
    device: Annotated[str, typer.Option()] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Task test accuracy / NLL, general perplexity and achieved sparsity (plus lm-eval with --tasks).

    A run directory or an allocation JSON is applied in memory to its dense model."""
    _setup_logging(verbose)
    from sieve.config import EvalSettings
    from sieve.evaluate.api import eval_config_for, evaluate_models
    from sieve.evaluate.lm_eval_runner import parse_task_list

    if baseline not in (None, "dense"):
        raise SieveError(f"--baseline must be 'dense', got {baseline!r}")
    lm_tasks = parse_task_list(tasks) if tasks else []
    if limit is not None and not lm_tasks:
        raise SieveError("--limit applies to lm-eval: give --tasks too")
    config = eval_config_for(model, task=task, general=general, dtype=dtype, device=device,
                             evaluation=EvalSettings(test_examples=test_examples))
    rows, path = evaluate_models(config, baseline=baseline == "dense", output=output, lm_eval_tasks=lm_tasks, limit=limit)
    console.print(_quality_table(rows, f"{config.task} test split / {config.general} held-out"))
    if lm_tasks:
        console.print(_lm_eval_table(rows, limit))
    console.print(f"results → {path}")


def _lm_eval_table(rows: list[dict[str, Any]], limit: int | None) -> Table:
    table = Table(title="lm-eval simple_evaluate" + (f" (first {limit} documents per task)" if limit else ""))
    for col in ("method", "task", "n", "metrics"):
        table.add_column(col, justify="right" if col == "n" else "left")
    for r in rows:
        for name, res in r.get("lm_eval", {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in res.items() if k not in ("spec", "n"))
            table.add_row(r["method"], name, str(res.get("n") or ""), shown)
    return table


@app.command()
@clean_errors
def search(
    budget: Annotated[Optional[float], typer.Option(help="Global sparsity budget (fraction of prunable weights).")] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    task: Annotated[Optional[str], typer.Option()] = None,
    general: Annotated[Optional[str], typer.Option()] = None,
    space: Annotated[Optional[str], typer.Option(help="Search space name or YAML file.")] = None,
    generations: Annotated[Optional[int], typer.Option()] = None,
    offspring: Annotated[Optional[int], typer.Option()] = None,
    population: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/NAME).")] = None,
    fitness: Annotated[Optional[str], typer.Option(help="task_nll, task_acc or kl.")] = None,
    general_weight: Annotated[Optional[float], typer.Option(help="λ for general-text KL added to the fitness.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Pareto mode: largest budget within this accuracy drop.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray evaluator actors (0: in-process).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Join a Ray cluster: auto or HOST:PORT.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config (e.g. a run's config.yaml).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory.")] = None,
    device: Annotated[Optional[str], typer.Option()] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Search per-matrix sparsity under an exact global budget (pymoo GA, checkpointed)."""
    _setup_logging(verbose)
    flags = dict(
        budget=budget, model=model, task=task, general=general, space=space, generations=generations,
        offspring=offspring, population=population, seed=seed, fitness=fitness, general_weight=general_weight,
        tolerance=tolerance, workers=workers, ray_address=ray_address, device=device,
    )
    _run_search(flags, config_path=config, run_dir=run_dir, resume=resume)


def _run_search(flags: dict[str, Any], *, config_path: Path | None, run_dir: Path | None, resume: Path | None) -> None:
    from sieve.config import SearchConfig, from_dict, load_yaml
    from sieve.search.run import SearchRun, open_run

    given = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        cfg, directory = open_run(None, resume, resume=True, overrides=given)
    else:
        base = load_yaml(config_path) if config_path else {}
        if "budget" not in given and "budget" not in base and "tolerance" not in given and "tolerance" not in base:
            raise SieveError("--budget is required (a fraction in (0, 1)), or --tolerance X, or --resume DIR")
        cfg = from_dict(SearchConfig, {**base, **given})
        cfg, directory = open_run(cfg, run_dir, resume=False)
    if cfg.tolerance is not None:
        from sieve.search.pareto import run_pareto

        result = run_pareto(cfg, directory, console=console)
        answer = result["largest_budget"]
        console.print(
            f"largest budget within {cfg.tolerance} of dense test accuracy: "
            f"{answer if answer is not None else 'none found'} (frontier → {directory / 'frontier.json'})"
        )
        return
    console.print(f"run directory: {directory}")
    total = cfg.generations

    def progress(record) -> None:
        done = record.generation
        rate = record.evals_per_s
        per_gen = record.seconds / max(done + 1, 1)
        eta = per_gen * (total - done)
        console.print(
            f"gen {done:>3}/{total}  best {record.best:.4f}  median {record.median:.4f}  "
            f"{rate:.2f} evals/s  tokens {record.tokens:,}  ETA {eta / 60:.1f} min",
            highlight=False,
        )

    try:
        outcome = SearchRun(cfg, directory).execute(on_generation=progress)
    except KeyboardInterrupt:
        err.print(f"interrupted; the last finished generation is checkpointed. Resume with:\n  sieve search --resume {directory}")
        raise typer.Exit(130) from None
    console.print(_quality_table(outcome["table"], f"budget {cfg.budget} · {cfg.task} test split · {cfg.general} held-out"))
    console.print(_sparsity_table(outcome["per_type"]))
    console.print(
        f"search: {outcome['evaluations']} evaluations, {outcome['tokens']:,} forward tokens, "
        f"{outcome['search_seconds']:.0f}s; best allocation → {directory / 'best_allocation.json'}"
    )


def _sparsity_table(per_type: dict[str, dict[str, float]]) -> Table:
    kinds = sorted({k for row in per_type.values() for k in row})
    table = Table(title="best allocation: sparsity per block × matrix")
    table.add_column("block")
    for k in kinds:
        table.add_column(k.split(".")[-1], justify="right")
    for block, row in per_type.items():
        table.add_row(block, *(f"{row.get(k, 0):.2f}" for k in kinds))
    return table


@app.command()
@clean_errors
def export(
    source: Annotated[Path, typer.Argument(help="Search run directory or sieve.allocation/v1 JSON.")],
    to: Annotated[str, typer.Option("--to", help="hf, llmcompressor, masks, csv or markdown.")],
    out: Annotated[Path, typer.Option(help="Output folder (hf) or file.")],
    model: Annotated[Optional[str], typer.Option(help="Model to apply it to (default: the run's / allocation's model).")] = None,
    modifier: Annotated[Optional[str], typer.Option(help="llmcompressor: sparsegpt (default) or wanda.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Task for recomputed task statistics (default: the run's / allocation's).")] = None,
    general: Annotated[Optional[str], typer.Option(help="General corpus for recomputed statistics (default: the run's / wikipedia).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="default: the run's, else float32")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export an allocation: pruned HF folder, llm-compressor recipe, binary masks, or a per-module table."""
    _setup_logging(verbose)
    from sieve.export import export_allocation

    summary = export_allocation(source, to, out, model=model, task=task, general=general, dtype=dtype, device=device,
                                options={"modifier": modifier})
    details = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()
                        if k not in ("format", "out", "allocation"))
    console.print(f"exported {summary['allocation']} as {to} → {out}" + (f" ({details})" if details else ""), highlight=False)


@app.command()
@clean_errors
def report(
    run: Annotated[Path, typer.Argument(help="Search run directory.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Plots (fitness per generation, sparsity heatmap, quality bars) and report.md in RUN/report/."""
    _setup_logging(verbose)
    from sieve.report import write_report

    written = write_report(run)
    for what, path in written.items():
        console.print(f"{what:>10}: {path}", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
