"""The ``sieve`` command line: a thin Typer layer over the library.

Each command turns the flags the user gave (and only those: defaults live on the config models)
into one validated, frozen config, calls one library function, and prints a table. Expected
failures (:class:`~sieve.errors.SieveError`, and OS errors of the machine such as a full disk:
:data:`~sieve.cli.errors.OS_PROBLEMS`) print one ``error:`` line and exit 2; anything else
prints one line naming a log file with the traceback and exits 1 (:mod:`sieve.cli.errors`); Ctrl-C or SIGTERM during a search
prints the resume command (or, before the first generation finished, that re-running starts afresh)
and exits 130.
"""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sieve.cli.errors import clean_errors, setup_logging
from sieve.errors import SieveError
from sieve.models.sources import BUILTIN_MODELS
from sieve.resources import builtin_names, registered_names

_STARTED = time.perf_counter()  #: when the CLI was imported: a search reports its start-up from here

app = typer.Typer(add_completion=False, no_args_is_help=True, help="How many parameters does my task really need?")
console = Console()
err = Console(stderr=True)


def _listed(names: list[str]) -> str:
    """``a, b or c`` (the choices a help text lists, from the registries)."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def _given(**flags: Any) -> dict[str, Any]:
    """The flags the user gave (Typer reports the others as ``None``)."""
    return {k: v for k, v in flags.items() if v is not None}


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


Model = Annotated[Optional[str], typer.Option(help=f"Built-in name ({', '.join(BUILTIN_MODELS)}), HF folder, .gguf file or hub name.")]
Task = Annotated[Optional[str], typer.Option(help=f"lm-eval task: built-in {' or '.join(builtin_names('tasks'))}, a YAML path (a task YAML is code) or a registered name.")]
General = Annotated[Optional[str], typer.Option(help="General corpus: wikipedia, a .txt/.jsonl/.json file or a hub dataset.")]
Dtype = Annotated[Optional[str], typer.Option(help="auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


@app.command()
@clean_errors
def prune(
    out: Annotated[Path, typer.Option(help="Folder for the pruned model (loadable with from_pretrained).")],
    model: Model = None,
    method: Annotated[Optional[str], typer.Option(help=f"{_listed(registered_names('sieve.scores'))}.")] = None,
    sparsity: Annotated[Optional[float], typer.Option(help="Uniform sparsity (fraction) of every prunable matrix.")] = None,
    pattern: Annotated[Optional[str], typer.Option(help="unstructured or N:M (2:4, 4:8).")] = None,
    lowrank: Annotated[Optional[str], typer.Option(help="Factorise instead of zeroing: the covariance of the low-rank projection, general, task or fused; --sparsity is then the fraction of parameters really removed.")] = None,
    allocation: Annotated[Optional[Path], typer.Option(help="sieve.allocation/v1 JSON (or a run dir) instead of uniform.")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Masks from `sieve export --to masks`: apply W ⊙ M, no scoring.")] = None,
    task: Task = None,
    general: General = None,
    calibration: Annotated[Optional[str], typer.Option(help="Statistics source for wanda/sparsegpt: general or task.")] = None,
    dtype: Dtype = None,
    device: Device = None,
    force: Force = False,
    verbose: Verbose = False,
) -> None:
    """Prune a model (uniformly, by an allocation, or by exported masks) and save it as a plain HF folder."""
    setup_logging(verbose)
    from sieve.config import FLAGS, validate
    from sieve.export.hf import prune_model, prune_with_masks
    from sieve.prune.config import PruneConfig
    from sieve.workspace import InputsConfig

    if masks is not None:
        if allocation is not None:
            raise SieveError("give --masks or --allocation, not both")
        inputs = validate(InputsConfig, _given(model=model, dtype=dtype, device=device), FLAGS)
        summary = prune_with_masks(inputs.model, masks, out, dtype=inputs.dtype, device=inputs.device, force=force)
        console.print(f"applied {masks} to {summary['model']}: sparsity {summary['achieved_sparsity']:.4f} → {out}")
        return
    fields = _given(model=model, task=task, general=general, sparsity=sparsity, allocation=allocation, dtype=dtype,
                    device=device)
    if method is not None or calibration is not None:
        fields["method"] = {"name": method or "fused", **_given(source=calibration)}
    if pattern is not None and lowrank is not None:
        raise SieveError("give --pattern (zeros) or --lowrank (factors), not both")
    if pattern is not None:
        fields["primitive"] = {"name": "mask", "pattern": pattern}
    if lowrank is not None:
        fields["primitive"] = {"name": "lowrank", "covariance": lowrank}
    summary = prune_model(validate(PruneConfig, fields, FLAGS), out, force=force)
    how = (f"low-rank factors ({summary['lowrank']['covariance']} covariance), {summary['reduction']:.4f} of the "
           "parameters removed" if summary["lowrank"] else
           f"{summary['method']['name']} to sparsity {summary['achieved_sparsity']:.4f} ({summary['pattern']})")
    console.print(f"pruned {summary['model']} with {how} in {summary['seconds']:.1f}s → {out}")


@app.command("eval")
@clean_errors
def eval_(
    model: Annotated[Optional[str], typer.Argument(help="Pruned folder, built-in name, HF folder, .gguf, run directory or allocation JSON (default: the built-in model).")] = None,
    task: Task = None,
    general: General = None,
    tasks: Annotated[Optional[str], typer.Option(help="Also run lm-eval's simple_evaluate on these tasks (comma-separated names or YAMLs).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="lm-eval: first N documents per task.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="'dense': also evaluate the dense model it was pruned from.")] = None,
    test_examples: Annotated[Optional[int], typer.Option(help="Cap on test examples (sieve's fast path).")] = None,
    output: Annotated[Optional[Path], typer.Option("--json", help="Where to write the JSON results.")] = None,
    dtype: Dtype = None,
    device: Device = None,
    verbose: Verbose = False,
) -> None:
    """Task test accuracy / NLL, general perplexity and achieved sparsity (plus lm-eval with --tasks).

    A run directory or an allocation JSON is applied in memory to its dense model."""
    setup_logging(verbose)
    from sieve.config import FLAGS, validate
    from sieve.evaluate.api import evaluate
    from sieve.evaluate.config import EvalConfig

    if baseline not in (None, "dense"):
        raise SieveError(f"--baseline must be 'dense', got {baseline!r}")
    if limit is not None and not tasks:
        raise SieveError("--limit applies to lm-eval: give --tasks too")
    fields = _given(model=model, task=task, general=general, lm_eval_tasks=tasks, limit=limit, output=output,
                    dtype=dtype, device=device, baseline=baseline == "dense" or None)
    if test_examples is not None:
        fields["evaluation"] = {"test_examples": test_examples}
    if model is not None and _is_tuned(model):  # a `sieve tune` output: before / after rows
        from sieve.tune.evaluate import evaluate_tuned as evaluate
    rows, path, config = evaluate(validate(EvalConfig, fields, FLAGS))
    console.print(_quality_table(rows, f"{config.task} test split / {config.general} held-out"))
    if config.lm_eval_tasks:
        console.print(_lm_eval_table(rows, config.limit))
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
    model: Model = None,
    task: Task = None,
    general: General = None,
    space: Annotated[Optional[str], typer.Option(help=f"Search space: a built-in name ({', '.join(builtin_names('search_spaces'))}) or a YAML file.")] = None,
    generations: Annotated[Optional[int], typer.Option()] = None,
    offspring: Annotated[Optional[int], typer.Option()] = None,
    population: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/NAME).")] = None,
    fitness: Annotated[Optional[str], typer.Option(help=f"{_listed(registered_names('sieve.search.fitness'))}.")] = None,
    general_weight: Annotated[Optional[float], typer.Option(help="λ for general-text KL added to the fitness.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Pareto mode: largest budget within this accuracy drop.")] = None,
    selection_examples: Annotated[Optional[int], typer.Option(help="Validation-pool documents held out from the search; the result is the generation best lowest on them.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop once the best has gone this many generations without improving on the held-out documents (needs --selection-examples).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray evaluator actors (0: in-process).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Join a Ray cluster: auto or HOST:PORT.")] = None,
    config: Annotated[Optional[str], typer.Option(help="YAML config: a built-in preset (gpu) or a file (e.g. a run's config.yaml).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory (from any working directory).")] = None,
    dtype: Dtype = None,
    device: Device = None,
    max_gpu_memory: Annotated[Optional[float], typer.Option(help="GiB of GPU memory for the weights; the other decoder blocks are streamed from host memory.")] = None,
    pruner_mode: Annotated[Optional[str], typer.Option(help="auto, in_place or on_the_fly (weights computed at every forward: ~1× the model's memory).")] = None,
    lanes: Annotated[Optional[int], typer.Option(help="In-process on a GPU: model replicas evaluating candidates side by side (small models).")] = None,
    batch_candidates: Annotated[Optional[int], typer.Option(help="In-process: up to this many candidates share one forward, each with its own pruned weights (small models on a GPU).")] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="On a GPU (in-place pruning, or on the fly with a per-weight score), replay each stage's scoring as a CUDA graph (default on).")] = None,
    packed_rows: Annotated[Optional[bool], typer.Option("--packed-rows/--no-packed-rows", help="Score several examples in one unpadded row where that is cheaper than padded length buckets (large models; default on).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start the run in a --run-dir that holds files sieve did not write (sieve deletes none of them).")] = False,
    verbose: Verbose = False,
) -> None:
    """Search per-matrix sparsity under an exact global budget (pymoo GA, checkpointed, resumable)."""
    setup_logging(verbose)
    from sieve.config import FLAGS, load_yaml, validate
    from sieve.resources import yaml_file
    from sieve.search.config import SearchConfig
    from sieve.search.run import SearchRun
    from sieve.search.rundir import RunDir, default_run_path

    flags = _given(budget=budget, model=model, task=task, general=general, space=space, generations=generations,
                   offspring=offspring, population=population, seed=seed, fitness=fitness,
                   general_weight=general_weight, tolerance=tolerance, selection_examples=selection_examples,
                   patience=patience, workers=workers, ray_address=ray_address,
                   dtype=dtype, device=device, max_gpu_memory=max_gpu_memory, pruner_mode=pruner_mode,
                   cuda_graphs=cuda_graphs, lanes=lanes, batch_candidates=batch_candidates, packed_rows=packed_rows)
    if resume is not None:
        if config is not None or run_dir is not None:
            raise SieveError("--resume takes the run's own config; drop --config / --run-dir")
        run = RunDir.existing(resume)
        if run.config().tolerance is not None:
            return _pareto(run, run.resumed_config(flags))
        runner = SearchRun(run, overrides=flags)
    else:
        base = load_yaml(yaml_file(config, "configs", "config preset")) if config else {}
        base.pop("digests", None)  # a new run records its own
        cfg = validate(SearchConfig, {**base, **flags}, Path(config).name if config else FLAGS, flagged=flags)
        run = RunDir(run_dir or default_run_path(cfg), force=force)
        if cfg.tolerance is not None:
            run.check_creatable(cfg)
            return _pareto(run, cfg)
        runner = SearchRun(run, cfg, demanded=flags)  # typed flags are demands; the preset's values preferences
    _execute(runner)


def _pareto(run, cfg) -> None:
    from sieve.search.pareto import run_pareto

    def show(point: dict) -> None:
        held_out = (f"held-out acc {point['selection_acc']:.3f} (dense {point['dense_selection_acc']:.3f}), "
                    if point["judged_on"] == "selection" else "")
        console.print(f"budget {point['budget']:.3f}: {held_out}test acc {point['task_acc']:.3f} (dense "
                      f"{point['dense_acc']:.3f}) → {'within' if point['feasible'] else 'outside'} tolerance "
                      f"{cfg.tolerance}", highlight=False)

    result = run_pareto(cfg, run, on_point=show)
    answer = result["largest_budget"]
    judged = "held-out" if cfg.selection_examples else "test"
    console.print(f"largest budget within {cfg.tolerance} of dense {judged} accuracy: "
                  f"{answer if answer is not None else 'none found'} (frontier → {run.frontier_path})")


def _execute(runner) -> None:
    from sieve.search.execution import ExecutionPlan

    run, total = runner.run, runner.config.generations
    console.print(f"run directory: {run.path}")
    if not runner.new and run.failure():
        console.print(f"resuming a run that failed: {run.failure()}", highlight=False)

    def progress(record) -> None:
        per_gen = record.seconds / max(record.generation + 1, 1)
        console.print(
            f"gen {record.generation:>3}/{total}  best {record.best:.4f}  median {record.median:.4f}  "
            + (f"held-out {record.selection:.4f}  " if record.selection is not None else "")
            + f"{record.evals_per_s:.2f} evals/s  tokens {record.tokens:,}  ETA {per_gen * (total - record.generation) / 60:.1f} min",
            highlight=False, soft_wrap=True,
        )

    def terminate(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)  # `kill`, a scheduler's stop: the Ctrl-C path
    runner.phases.add("startup", time.perf_counter() - _STARTED)  # imports and the cheap checks
    try:
        outcome = runner.execute(on_generation=progress)
    except KeyboardInterrupt:
        if run.has_checkpoint:
            err.print(f"interrupted; the last finished generation is checkpointed. Resume with:\n  sieve search --resume {run.path}")
        else:
            err.print("interrupted before the first generation finished, so there is nothing to resume; run the same "
                      "command again to start afresh")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    cfg = runner.config
    stop = outcome.get("early_stopping")
    if stop and stop["stopped"]:
        console.print(f"early stopping after generation {outcome['generations_done']}: no lower held-out value for "
                      f"{stop['patience']} generations since generation {stop['best_generation']}", highlight=False)
    console.print(_quality_table(outcome["table"], f"budget {cfg.budget} · {cfg.task} test split · {cfg.general} held-out"))
    console.print(_sparsity_table(outcome["per_type"]))
    console.print(
        f"search: {outcome['evaluations']} evaluations, {outcome['tokens']:,} forward tokens, "
        f"{outcome['search_seconds']:.0f}s; best allocation → {run.best_allocation_path}"
    )
    console.print(f"execution: {ExecutionPlan.model_validate(outcome['execution']).describe()}", highlight=False)
    phases = outcome["phases"]
    total = sum(phases.values())
    console.print("phases: " + " · ".join(f"{name} {sec:.1f}s" for name, sec in phases.items())
                  + f" · total {total:.1f}s (loop {phases.get('loop', 0.0) / max(total, 1e-9):.0%})", highlight=False)


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
    to: Annotated[str, typer.Option("--to", help=f"{_listed(registered_names('sieve.export'))}.")],
    out: Annotated[Path, typer.Option(help="Output folder (hf) or file.")],
    model: Annotated[Optional[str], typer.Option(help="Where the allocation's model is now (default: the recorded one; checked by weights hash).")] = None,
    modifier: Annotated[Optional[str], typer.Option(help="llmcompressor: sparsegpt (default) or wanda.")] = None,
    device: Device = None,
    force: Force = False,
    verbose: Verbose = False,
) -> None:
    """Export an allocation: pruned HF folder, llm-compressor recipe, binary masks, or a per-module table."""
    setup_logging(verbose)
    from sieve.export import export_allocation

    fmt = {"name": to, **_given(modifier=modifier)}
    summary = export_allocation(source, fmt, out, model=model, device=device or "auto", force=force)
    details = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()
                        if k not in ("format", "out", "allocation"))
    console.print(f"exported {summary['allocation']} as {to} → {out}" + (f" ({details})" if details else ""), highlight=False)


@app.command()
@clean_errors
def report(
    run: Annotated[Path, typer.Argument(help="Search run directory.")],
    verbose: Verbose = False,
) -> None:
    """Plots (fitness per generation, sparsity heatmap, quality bars) and report.md in RUN/report/."""
    setup_logging(verbose)
    from sieve.report import write_report

    if _is_tuned(run):
        from sieve.tune.report import write_tuned_report as write_report
    written = write_report(run)
    for what, path in written.items():
        console.print(f"{what:>10}: {path}", highlight=False)


def _is_tuned(path: str | Path) -> bool:
    from sieve.tune.outdir import is_tuned

    return is_tuned(path)


@app.command()
@clean_errors
def tune(
    source: Annotated[Optional[str], typer.Argument(help="Search run directory or exported model folder.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: the tuned model, exported like the run.")] = None,
    task: Task = None,
    steps: Annotated[Optional[int], typer.Option()] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank r (alpha 2r).")] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    distill: Annotated[bool, typer.Option("--distill", help="Add KL to the dense model on task and general text.")] = False,
    config: Annotated[Optional[str], typer.Option(help="A built-in tune preset (gpu) or a YAML file.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the tuning in this folder.")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Device = None,
    force: Force = False,
    verbose: Verbose = False,
) -> None:
    """LoRA-tune a pruned model on the task's training split; zeros, factor ranks and removed blocks are kept."""
    setup_logging(verbose)
    from sieve.tune.command import flag_fields, run_tune

    flags = flag_fields(task=task, steps=steps, lora_rank=lora_rank, lr=lr, distill=distill, device=device, seed=seed)
    echo = functools.partial(console.print, highlight=False, soft_wrap=True)
    echo(run_tune(source, out, flags, preset=config, resume=resume, force=force, echo=echo))


def main() -> None:  # pragma: no cover
    app()
