"""``sieve tune``'s flag plumbing, kept out of :mod:`sieve.cli` (which stays a thin Typer layer).

Flags → one :class:`~sieve.tune.config.TuneConfig` (over a ``--config`` preset or file: flags win,
unknown keys are errors) → :func:`sieve.tune.run.start` / :func:`~sieve.tune.run.resume`; the
progress line (step, loss, validation metric, ETA) is printed by the callback built here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sieve.config import FLAGS, load_yaml, validate
from sieve.errors import SieveError
from sieve.tune.checkpoint import Progress
from sieve.tune.config import TuneConfig, preset_file


def build_config(source: str, flags: dict[str, Any], preset: str | None) -> TuneConfig:
    """The config of a new tuning: preset (or file), then the typed flags."""
    base = load_yaml(preset_file(preset)) if preset else {}
    for provenance in ("digests", "base", "source"):
        base.pop(provenance, None)  # a new tuning records its own (a finished tuning's tune.yaml can be reused)
    where = Path(preset).name if preset else FLAGS
    return validate(TuneConfig, {**base, **flags, "source": source}, where, flagged={*flags, "source"})


def progress_printer(total: int, echo: Callable[[str], None]) -> Callable[[dict[str, Any], Progress], None]:
    """``step  12/40  loss 0.512  val NLL 0.431 acc 0.750 (best 0.420 @ 10)  2.3 s/step  ETA 1.1 min``."""
    timed: list[float] = []  # seconds of the steps this process ran (a resume starts counting afresh)

    def show(row: dict[str, Any], progress: Progress) -> None:
        step = row["step"]
        if step == 0:
            echo(f"step   0/{total}  val NLL {row['val_nll']:.4f} acc {row['val_acc']:.3f} (before tuning)")
            return
        timed.append(row["seconds"])
        per_step = sum(timed) / len(timed)
        val = f"  val NLL {row['val_nll']:.4f} acc {row['val_acc']:.3f}" if "val_nll" in row else ""
        echo(f"step {step:>3}/{total}  loss {row['loss']:.4f}{val}  (best {progress.best:.4f} @ {progress.best_step})  "
             f"{per_step:.2f} s/step  ETA {per_step * (total - step) / 60:.1f} min" + (f"  stopped: {row['stopped']}"
                                                                                  if "stopped" in row else ""))

    return show


def run_tune(source: str | None, out: Path | None, flags: dict[str, Any], *, preset: str | None, resume: Path | None,
             force: bool, echo: Callable[[str], None]) -> str:
    """``sieve tune``: a new tuning of ``source`` into ``out``, or ``--resume`` of one; returns the closing line."""
    from sieve.tune import run

    if resume is not None:
        extra = sorted(set(flags) - {"device"})
        if source is not None or out is not None or preset is not None or extra or force:
            named = ["SOURCE"] * (source is not None) + ["--out"] * (out is not None) + ["--config"] * (
                preset is not None) + [f"--{k.replace('_', '-')}" for k in extra] + ["--force"] * force
            raise SieveError(f"--resume continues with the tuning's own settings; drop {', '.join(named)}")
        from sieve.tune.outdir import TuneDir

        total = TuneDir(resume).config().steps
        return closing(run.resume(resume, device=flags.get("device"), on_step=progress_printer(total, echo)))
    if source is None or out is None:
        raise SieveError("give the run or exported folder to tune and --out DIR (or --resume DIR)")
    config = build_config(source, flags, preset)
    return closing(run.start(config, out, force=force, on_step=progress_printer(config.steps, echo)))


def closing(summary: dict[str, Any]) -> str:
    """``validation task NLL 0.69 → 0.61, acc 0.55 → 0.70 (best step 30 of 40); tuned model → OUT``."""
    before, after = summary["before"], summary["after"]
    return (f"validation task NLL {before['val_nll']:.4f} → {after['val_nll']:.4f}, acc {before['val_acc']:.3f} → "
            f"{after['val_acc']:.3f} (best step {summary['best_step']} of {summary['steps_run']}); the test split was "
            f"not read. Tuned model → {summary['out']}")


def flag_fields(*, task: str | None, steps: int | None, lora_rank: int | None, lr: float | None, distill: bool,
                device: str | None, seed: int | None) -> dict[str, Any]:
    """The typed flags as config fields (``--lora-rank r`` sets ``lora.rank`` and ``lora.alpha = 2r``)."""
    fields: dict[str, Any] = {k: v for k, v in dict(task=task, steps=steps, lr=lr, device=device, seed=seed).items()
                              if v is not None}
    if lora_rank is not None:
        fields["lora"] = {"rank": lora_rank, "alpha": 2.0 * lora_rank}
    if distill:
        fields["distill"] = {}
    return fields
