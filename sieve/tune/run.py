"""Prepare, train and export one tuning: the shell over the pure parts of :mod:`sieve.tune`.

Order of work, cheapest first, so that bad input fails before anything slow or written: the source
is recognised from its small files, the output folder is checked (never over, around or into an
input; a previous output only with ``--force``; never one another process holds), then the base is
prepared and the data loaded, then — under the folder's lock — the config is written (new) or
checked against the folder's (resume: the base's weights hash and the data digests must be
unchanged), the adapters attached, the loop run, and the best step merged and exported.

The export is checked, not trusted: every zero of the base is still a zero (``keep_zeros``), the
parameter count and the decoder-block count are unchanged; ``tuning.json`` records those numbers,
the settings, the base's identity, the data digests and the validation metric before (step 0) and
after (the best step). It is written last, so its presence marks a finished tuning.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sieve.config import FLAGS, differences, to_dict, validate
from sieve.data.general import BUILTIN_CORPUS, GeneralCorpus, token_blocks
from sieve.data.splits import SplitSpec, load_task
from sieve.data.task_spec import resolve_task, task_files
from sieve.errors import SieveError
from sieve.evaluate.target import local_path
from sieve.io import check_output, file_digest, fsync_dir, write_json, write_safetensors
from sieve.models.adapters import find_matrices
from sieve.scoring.encode import encode_task
from sieve.tune.base import Base, SourceInfo, describe_source, open_base, open_dense
from sieve.tune.checkpoint import Progress
from sieve.tune.config import TuneConfig
from sieve.tune.data import TrainingData, examples_digest
from sieve.tune.masked_lora import attach, load_adapter_state, lora_targets, masked_modules, merge
from sieve.tune.outdir import TuneDir, is_tuned
from sieve.tune.trainer import Trainer
from sieve.workspace import resolve_device

log = logging.getLogger(__name__)

FORMAT = "sieve.tuning/v1"
Progressed = Callable[[dict[str, Any], Progress], None]


def with_base_defaults(config: TuneConfig) -> TuneConfig:
    """``task`` / ``general`` (and the folder a task's relative paths resolve in) from the base when not given."""
    info = describe_source(config.source)
    update: dict[str, Any] = {}
    if config.task is None:
        update["task"] = info.task or "rotten_tomatoes"
        if info.workdir:
            update["workdir"] = info.workdir
    if config.general is None:
        update["general"] = info.general or BUILTIN_CORPUS
    return validate(TuneConfig, {**to_dict(config), **update}, FLAGS) if update else config


def start(config: TuneConfig, out: str | Path, *, force: bool = False, on_step: Progressed | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """A new tuning of ``config.source`` into ``out``."""
    config = with_base_defaults(config)
    info = describe_source(config.source)
    folder = TuneDir(out)
    folder.check_new(force=force)
    reads = {**info.inputs(), "the task": local_path(config.task), "the general corpus": local_path(config.general)}
    check_output(folder.path, reads, force=force, writes="folder")
    return _execute(config, folder, new=True, force=force, on_step=on_step, stop_after=stop_after)


def resume(out: str | Path, *, device: str | None = None, on_step: Progressed | None = None,
           stop_after: int | None = None) -> dict[str, Any]:
    """Continue the tuning in ``out`` from its last checkpoint (from any working directory)."""
    folder = TuneDir(out)
    if is_tuned(folder.path):
        raise SieveError(f"{folder.path} holds a finished tuning; nothing to resume")
    config = folder.config()
    if device is not None:
        config = validate(TuneConfig, {**to_dict(config), "device": device}, FLAGS)
    return _execute(config, folder, new=False, force=False, on_step=on_step, stop_after=stop_after)


def tuning_split(config: TuneConfig, info: SourceInfo) -> SplitSpec:
    """How the tuning splits the task. A base chosen by a search on this task validates on documents
    that search never scored: its validation and selection documents picked the base, so on them the
    untuned model (step 0) would look better than it is and early stopping would favour it. The
    tuning then splits as the search did (its seed and validation subset) and validates on
    ``validation_examples`` of the validation pool's other documents, past the search's selection
    ones (as many as remain, when fewer do). Otherwise the tuning's own seed draws the validation
    documents. The test split is rendered for one document only (lm-eval's split logic needs one)."""
    searched = info.split if info.split is not None and info.task == config.task else None
    if searched is None:
        return SplitSpec(seed=config.seed, max_calibration=config.train_examples,
                         max_validation=config.validation_examples, max_test=1)
    return SplitSpec(seed=searched.seed, max_calibration=config.train_examples, max_validation=searched.max_validation,
                     max_selection=config.validation_examples, skip_selection=searched.max_selection,
                     selection_up_to=True, max_test=1)


def _data(config: TuneConfig, info: SourceInfo, tokenizer) -> tuple[TrainingData, Any, dict[str, str]]:
    """Training examples (the calibration role), the encoded validation documents
    (:func:`tuning_split`), and their digests; the test split is never read."""
    split = tuning_split(config, info)
    splits = load_task(config.task, split, base_dir=Path(config.workdir))
    held_out = split.max_selection > 0  # documents the search never scored: the selection role
    validation_examples = splits.selection if held_out else splits.validation
    if held_out:
        log.info("tuning validates on %d validation documents the search that chose the base never scored",
                 len(validation_examples))
    general = None
    digests = {"task_examples": examples_digest(splits.calibration, validation_examples),
               **task_files(resolve_task(config.task), Path(config.workdir))}
    if config.distill is not None and config.distill.general_mix > 0:
        corpus = GeneralCorpus.load(config.general)
        general = token_blocks(corpus.calibration, tokenizer, config.distill.general_blocks, config.distill.block_len)
        if config.general != BUILTIN_CORPUS and Path(config.general).is_file():
            digests[str(Path(config.general).resolve())] = file_digest(config.general)
    data = TrainingData.build(splits.calibration, tokenizer, config.max_length, general)
    validation = encode_task(validation_examples, tokenizer, config.max_length)
    log.info("tuning data: %d training examples (calibration split), %d validation examples",
             len(data.rows), len(validation))
    return data, validation, digests


def _check_resumable(saved: TuneConfig, digests: dict[str, str], base: dict[str, Any], where: Path) -> None:
    for key in sorted(set(saved.digests) | set(digests)):
        if saved.digests.get(key) != digests.get(key):
            raise SieveError(f"cannot resume {where}: the tuning data changed ({key}: {saved.digests.get(key, 'absent')} "
                             f"at the start, {digests.get(key, 'absent')} now)")
    changed = differences(saved.base, base)
    if changed:
        raise SieveError(f"cannot resume {where}: the base model changed ({'; '.join(changed[:3])})")


def _execute(config: TuneConfig, folder: TuneDir, *, new: bool, force: bool, on_step: Progressed | None,
             stop_after: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    info = describe_source(config.source)
    device = resolve_device(config.device)
    base = open_base(info, device=device, dtype=config.dtype)
    data, validation, digests = _data(config, info, base.tokenizer)
    identity = base.identity()
    with folder.lock():
        if new:
            if force:
                folder.clear()
            config = config.model_copy(update={"digests": digests, "base": identity})
            folder.write_config(config)
        else:
            saved = folder.config()
            _check_resumable(saved, digests, identity, folder.path)
        try:
            teacher = open_dense(info, device=device, dtype=config.dtype) if config.distill is not None else None
            targets = lora_targets(base.model, config.lora.targets)
            params = attach(base.model, targets, config.lora, keep_zeros=config.keep_zeros, seed=config.seed)
            trainer = Trainer(base.model, params, config, data, validation, folder, device=torch.device(device),
                              teacher=teacher)
            progress = trainer.run(on_step=on_step, stop_after=stop_after)
            if not progress.done:
                return {"interrupted": True, "step": progress.step, "out": str(folder.path)}
            masked = masked_modules(base.model)
            return _export(config, base, folder, trainer, progress, identity, masked, len(targets),
                           time.perf_counter() - started)
        except Exception as exc:
            folder.mark_failed(f"{type(exc).__name__}: {str(exc).strip().partition(chr(10))[0]}")
            raise


def _export(config: TuneConfig, base: Base, folder: TuneDir, trainer: Trainer, progress: Progress,
            identity: dict[str, Any], masked: list[str], n_targets: int, seconds: float) -> dict[str, Any]:
    """Merge the best step's adapters and write the model folder, then ``tuning.json`` last."""
    best = trainer.best
    held_out = tuning_split(config, base.info).max_selection > 0
    load_adapter_state(base.model, best)
    merge(base.model)
    after = Base(base.model, base.tokenizer, base.model_id, base.allocation, base.info).identity()
    structure = {key: {"before": identity[key], "after": after[key]} for key in ("zeros", "parameters", "blocks")}
    if config.keep_zeros and after["zeros"] < identity["zeros"]:
        raise SieveError(f"internal check failed: the merge filled {identity['zeros'] - after['zeros']} zeros in")
    if after["parameters"] != identity["parameters"] or after["blocks"] != identity["blocks"]:
        raise SieveError(f"internal check failed: the merged model's structure changed ({structure})")
    tmp = folder.path / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    base.model.save_pretrained(tmp)
    base.tokenizer.save_pretrained(tmp)
    for entry in sorted(tmp.iterdir()):
        os.replace(entry, folder.path / entry.name)
    tmp.rmdir()
    fsync_dir(folder.path)
    if base.allocation is not None:
        base.allocation.write(folder.path / "allocation.json")
    (folder.path / "sieve_model_id").write_text((base.info.dense or base.model_id) + "\n")
    write_safetensors(folder.adapters_path, best, metadata={"format": "sieve.tune-adapters/v1"})
    history = folder.history()
    first = history[0]
    chosen = next(r for r in history if r["step"] == progress.best_step)
    summary = {
        "format": FORMAT, "out": str(folder.path), "config": to_dict(config), "base": identity, "digests": dict(config.digests),
        "steps_run": progress.step, "best_step": progress.best_step,
        "stopped_early": progress.step < config.steps,
        "selection": f"validation task NLL (choice-normalised) on {len(trainer.validation)} validation examples"
                     f"{' the search that chose the base never scored' if held_out else ''}, measured at step 0 "
                     f"and every {config.eval_every} steps; the best step is exported",
        "validation_held_out": held_out,
        "train_examples": len(trainer.data.rows), "validation_examples": len(trainer.validation),
        "before": {"val_nll": first["val_nll"], "val_acc": first["val_acc"]},
        "after": {"val_nll": chosen["val_nll"], "val_acc": chosen["val_acc"]},
        "structure": structure, "lora_modules": n_targets, "masked_modules": len(masked),
        "matrices": len(find_matrices(base.model)), "seconds": seconds,
    }
    write_json(folder.summary_path, summary)
    shutil.rmtree(folder.checkpoint_path.parent, ignore_errors=True)
    folder.failed_path.unlink(missing_ok=True)
    log.info("tuned %s → %s: validation NLL %.4f → %.4f (best step %d of %d)", base.info.path, folder.path,
             summary["before"]["val_nll"], summary["after"]["val_nll"], progress.best_step, progress.step)
    return summary
