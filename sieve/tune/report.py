"""``sieve report TUNED``: ``TUNED/report/report.md`` and ``tuning.png`` of a finished tuning.

Reads only the folder (no model is loaded): ``tuning.json`` (settings, base, structure before /
after, the validation metric before — step 0 — and after — the best step), ``history.jsonl``
(training loss per step, validation NLL where measured) and, when ``sieve eval`` ran, ``eval.json``
(the test split's before / after rows). The plot shares :mod:`sieve.report`'s canvas helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sieve.io import read_json, write_text
from sieve.report import fmt_number, new_figure, save_png
from sieve.tune.outdir import TuneDir


def plot_tuning(history: Sequence[Mapping[str, Any]], best_step: int, path: Path) -> Path:
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    train = [r for r in history if "loss" in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (gold-continuation NLL per token, + KL when distilling)", fontsize=8)
    val = [r for r in history if "val_nll" in r]
    twin = ax.twinx()
    twin.plot([r["step"] for r in val], [r["val_nll"] for r in val], marker="o", color="#2ca02c",
              label="validation task NLL")
    twin.axvline(best_step, color="#2ca02c", linestyle=":", label=f"best step {best_step} (exported)")
    twin.set_ylabel("validation task NLL (choice-normalised, nats)", fontsize=8)
    ax.set_title("Tuning: training loss and validation NLL (lower is better)")
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8)
    return save_png(fig, path)


def markdown(folder: TuneDir, summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None, image: str) -> str:
    config, base = summary["config"], summary["base"]
    lines = [f"# sieve tuning report: `{folder.path.name}`", "",
             f"Tuned from `{base['path']}` ({base['kind']}, weights hash `{base['weights_hash']}`).", ""]
    settings = {k: config[k] for k in ("task", "steps", "batch_size", "lr", "schedule", "warmup_steps", "keep_zeros",
                                       "train_examples", "validation_examples", "eval_every", "patience", "seed")}
    settings["lora"] = config["lora"]
    settings["distill"] = config["distill"]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in settings.items()]
    lines += ["", "## Structure (kept exactly)", "", "| | before | after |", "|---|---:|---:|"]
    for key, value in summary["structure"].items():
        lines.append(f"| {key} | {value['before']:,} | {value['after']:,} |")
    lines += ["", "## Validation (selects the best step)", "", f"{summary['selection']}.", "",
              "| | step | val task NLL | val acc |", "|---|---:|---:|---:|",
              f"| before tuning | 0 | {fmt_number(summary['before']['val_nll'], 4)} | {fmt_number(summary['before']['val_acc'], 3)} |",
              f"| tuned (best step) | {summary['best_step']} | {fmt_number(summary['after']['val_nll'], 4)} | "
              f"{fmt_number(summary['after']['val_acc'], 3)} |", "",
              f"{summary['steps_run']} of {config['steps']} steps run" + (" (stopped early)" if summary["stopped_early"]
                                                                          else "") + f", {fmt_number(summary['seconds'], 0)} s.",
              ""]
    lines += ["## Test split (`sieve eval`)", ""]
    if evaluation and evaluation.get("rows"):
        lines += ["| model | task acc | task NLL | wiki PPL | sparsity | parameters |", "|---|---:|---:|---:|---:|---:|"]
        for r in evaluation["rows"]:
            lines.append(f"| {r['method']} | {fmt_number(r['task_acc'], 3)} | {fmt_number(r['task_nll'], 3)} | "
                         f"{fmt_number(r['wiki_ppl'], 2)} | {fmt_number(r['sparsity'], 4)} | {r['parameters']:,} |")
    else:
        lines.append(f"Not measured yet: run `sieve eval {folder.path}`.")
    lines += ["", f"![training loss and validation NLL per step]({image})", ""]
    return "\n".join(lines)


def write_tuned_report(path: str | Path) -> dict[str, Path]:
    """Write ``TUNED/report/tuning.png`` and ``report.md``; return their paths."""
    folder = TuneDir(path)
    summary = folder.summary()
    history = folder.history()
    evaluation = read_json(folder.eval_path) if folder.eval_path.is_file() else None
    written = {"tuning": plot_tuning(history, summary["best_step"], folder.report_dir / "tuning.png")}
    written["markdown"] = write_text(folder.report_dir / "report.md",
                                     markdown(folder, summary, evaluation, written["tuning"].name))
    return written
