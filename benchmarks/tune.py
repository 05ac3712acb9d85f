"""Tuning back: ``sieve tune`` on zeros, low-rank factors and removed blocks, and the distillation mix.

    python benchmarks/tune.py [--model smollm2-135m] [--task rotten_tomatoes] [--bases zeros,lowrank,depth]
                              [--mixes 0,0.5,1] [--test-examples 100] [--device cpu] [--tag PART] [--smoke]

Every step is the command a user types (``sieve prune`` / ``sieve search``, ``sieve tune``,
``sieve eval``), run as a subprocess and recorded with its wall time. Bases: ``zeros`` (uniform
fused zeros at ``--zeros``), ``lowrank`` (uniform data-aware factors removing ``--lowrank`` of the
parameters), ``depth`` (a short depth search removing ``--depth`` of the blocks' parameters). Each
base is tuned with the defaults (cross-entropy on the task's training split); the zeros base also
with ``--distill`` at every ``general_mix`` of ``--mixes`` (the share of the KL term on general
text rather than task text: the ablation). Each tuned folder is then measured by ``sieve eval``
(before / after rows on the task's test split, Wikipedia perplexity, zeros and parameters).
Writes ``benchmarks/results/tune-<date>-<device>[-TAG].json``; ``--smoke`` runs a tiny random model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, provenance, smoke_inputs, write_result  # noqa: E402

DEPTH_SEARCH = {"generations": 2, "offspring": 4, "population": 3, "validation_examples": 32, "stages": [8],
                "promote": [2], "calibration": {"general_blocks": 16, "task_examples": 32},
                "evaluation": {"test_examples": 100, "ppl_blocks": 8}}
SMOKE_SEARCH = {"generations": 1, "offspring": 2, "population": 2, "validation_examples": 8, "stages": [4],
                "promote": [1], "batch_size": 4, "calibration": {"general_blocks": 4, "block_len": 32,
                                                                  "task_examples": 8, "batch_size": 4},
                "evaluation": {"test_examples": 8, "ppl_blocks": 2, "block_len": 32}}
SMOKE_TUNE = {"steps": 2, "warmup_steps": 0, "eval_every": 1, "checkpoint_every": 1, "train_examples": 8,
              "validation_examples": 4, "max_length": 64, "lora": {"rank": 2, "alpha": 4.0},
              "distill": None}


def sieve(args: list[str], log: Path) -> tuple[str, float]:
    """Run ``sieve ARGS`` (this interpreter's package); the command line and its wall time."""
    command = ["sieve", *args]
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(command)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "sieve.cli", *args], stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"`{shlex.join(command)}` failed (exit {done.returncode}); see {log}")
    return shlex.join(command), time.perf_counter() - start


def make_bases(args: argparse.Namespace, inputs: dict[str, str], work: Path, log: Path) -> dict[str, dict[str, Any]]:
    common = ["--model", inputs["model"], "--task", inputs["task"], "--general", inputs["general"],
              "--device", args.device]
    bases: dict[str, dict[str, Any]] = {}
    wanted = args.bases.split(",")
    if "zeros" in wanted:
        out = work / f"zeros-{args.zeros}"
        command, seconds = sieve(["prune", *common, "--method", "fused", "--sparsity", str(args.zeros),
                                  "--out", str(out)], log)
        bases["zeros"] = {"source": str(out), "command": command, "seconds": seconds}
    if "lowrank" in wanted:
        out = work / f"lowrank-{args.lowrank}"
        command, seconds = sieve(["prune", *common, "--lowrank", "fused", "--sparsity", str(args.lowrank),
                                  "--out", str(out)], log)
        bases["lowrank"] = {"source": str(out), "command": command, "seconds": seconds}
    if "depth" in wanted:
        config = work / "depth-search.yaml"
        config.write_text(yaml.safe_dump(SMOKE_SEARCH if args.smoke else DEPTH_SEARCH))
        out = work / "depth-run"
        command, seconds = sieve(["search", *common, "--space", "depth", "--budget", str(args.depth),
                                  "--config", str(config), "--run-dir", str(out)], log)
        bases["depth"] = {"source": str(out), "command": command, "seconds": seconds}
    return bases


def variants(args: argparse.Namespace, base: str) -> dict[str, dict[str, Any]]:
    """Tune settings by label: the defaults, and for zeros ``--distill`` at each mix."""
    found: dict[str, dict[str, Any]] = {"ce": {}}
    if base == "zeros":
        for mix in (float(m) for m in args.mixes.split(",") if m):
            found[f"distill-mix{mix:g}"] = {"distill": {"general_mix": mix}}
    return found


def tune_rows(args: argparse.Namespace, inputs: dict[str, str], bases: dict[str, dict[str, Any]], work: Path,
              log: Path, record) -> None:
    for base, made in bases.items():
        for label, settings in variants(args, base).items():
            fields = {**(SMOKE_TUNE if args.smoke else {}), **settings}
            if args.smoke and "distill" in settings:
                fields["distill"] = {**settings["distill"], "general_blocks": 4, "block_len": 32, "general_batch": 2}
            config = work / f"tune-{base}-{label}.yaml"
            config.write_text(yaml.safe_dump(fields))
            out = work / f"tuned-{base}-{label}"
            tune_command, tune_seconds = sieve(["tune", made["source"], "--out", str(out), "--task", inputs["task"],
                                                "--config", str(config), "--device", args.device], log)
            eval_command, eval_seconds = sieve(["eval", str(out), "--device", args.device, "--test-examples",
                                                str(args.test_examples)], log)
            summary = json.loads((out / "tuning.json").read_text())
            test = {r["stage"]: r for r in json.loads((out / "eval.json").read_text())["rows"]}
            record({"base": base, "variant": label, "settings": fields, "base_command": made["command"],
                    "tune_command": tune_command, "tune_seconds": round(tune_seconds, 1),
                    "eval_command": eval_command, "eval_seconds": round(eval_seconds, 1),
                    "best_step": summary["best_step"], "validation": {"before": summary["before"],
                                                                      "after": summary["after"]},
                    "test": {stage: {k: test[stage][k] for k in ("task_acc", "task_nll", "wiki_ppl", "sparsity",
                                                                  "parameters", "n_test")}
                             for stage in ("before", "after")}})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--general", default="wikipedia")
    p.add_argument("--bases", default="zeros,lowrank,depth")
    p.add_argument("--zeros", type=float, default=0.6)
    p.add_argument("--lowrank", type=float, default=0.3)
    p.add_argument("--depth", type=float, default=0.25)
    p.add_argument("--mixes", default="0,0.5,1")
    p.add_argument("--test-examples", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, help="where bases and tuned folders go (default: a temporary folder)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sieve-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = smoke_inputs(work / "inputs") if args.smoke else {
        "model": args.model, "task": args.task, "general": args.general}
    if args.smoke:  # two blocks: half of them is the smallest depth budget
        args.test_examples, args.depth = min(args.test_examples, 8), 0.5
    tag = args.tag or ("smoke" if args.smoke else "")
    log = work / "commands.log"
    body: dict[str, Any] = {**provenance(), "command": " ".join(["benchmarks/tune.py", *argv]), **inputs,
                            "log": str(log), "rows": []}
    bases = make_bases(args, inputs, work, log)
    body["bases"] = bases

    def record(row: dict[str, Any]) -> None:
        body["rows"].append(row)
        write_result("tune", body, args.out_dir, tag)  # after every row: a cut-off run keeps what it measured
        before, after = row["test"]["before"], row["test"]["after"]
        print(f"{row['base']:8s} {row['variant']:16s} acc {before['task_acc']:.3f} -> {after['task_acc']:.3f}  "
              f"nll {before['task_nll']:.3f} -> {after['task_nll']:.3f}  ppl {before['wiki_ppl']:.1f} -> "
              f"{after['wiki_ppl']:.1f}  params {after['parameters']}  {row['tune_seconds']:.0f}s", flush=True)

    tune_rows(args, inputs, bases, work, log, record)
    path = write_result("tune", body, args.out_dir, tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
