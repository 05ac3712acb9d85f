"""The tuning loop: AdamW on the adapters, validation picks the best step, checkpoints resume exactly.

Step ``s`` (1-based) draws its batch as a pure function of ``(seed, s)``, sets the learning rate
from :func:`learning_rate`, and takes one AdamW step on the adapters only. Validation (the task's
validation split, scored by sieve's scorer: the choice-normalised NLL of the gold answer, as the
search's fitness, and the accuracy) runs at step 0 — the untuned model, the "before" row — every
``eval_every`` steps and at the last one; the best step so far is kept (its adapters in memory and in
the checkpoint), ``patience`` validations without improvement stop the run early. Validation runs
under a forked RNG so it never moves the training stream. The checkpoint is written every
``checkpoint_every`` steps and at the end, after that step's history line (a resume drops lines past
the checkpoint and recomputes them).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sieve.metrics.quality import task_loss
from sieve.scoring.encode import EncodedTask
from sieve.scoring.plan import score_examples
from sieve.scoring.results import choice_metrics
from sieve.tune.checkpoint import Checkpoint, Progress, adam_state, restore_adam
from sieve.tune.config import TuneConfig
from sieve.tune.data import TrainingData
from sieve.tune.loss import combined, continuation_nll, distill_kl
from sieve.tune.masked_lora import adapter_state, load_adapter_state
from sieve.tune.outdir import TuneDir

log = logging.getLogger(__name__)

Progressed = Callable[[dict[str, Any], Progress], None]


def learning_rate(step: int, config: TuneConfig) -> float:
    """Linear warm-up over ``warmup_steps`` to ``lr``, then ``cosine`` (to 0 at ``steps``), ``linear``
    (the same end) or ``constant``: ``lr · ½(1 + cos(π·p))`` / ``lr · (1 − p)`` with
    ``p = (s − warmup − 1) / (steps − warmup)``."""
    warm = config.warmup_steps
    if step <= warm:
        return config.lr * step / (warm + 1)
    p = (step - warm - 1) / (config.steps - warm)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * p))
    if config.schedule == "linear":
        return config.lr * (1 - p)
    return config.lr


class Trainer:
    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], config: TuneConfig, data: TrainingData,
                 validation: EncodedTask, out: TuneDir, *, device: torch.device, teacher: nn.Module | None = None) -> None:
        self.model, self.config, self.data, self.validation, self.out = model, config, data, validation, out
        self.device, self.teacher = device, teacher
        ordered = sorted(params)
        self.names = {id(params[n]): n for n in ordered}
        self.optimizer = torch.optim.AdamW([params[n] for n in ordered], lr=config.lr, weight_decay=config.weight_decay)
        self.best: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ measurements
    def validate(self) -> dict[str, float]:
        """Validation task NLL (choice-normalised, lower is better) and accuracy of the model now."""
        self.model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            metrics = choice_metrics(score_examples(self.model, self.validation, batch_size=self.config.eval_batch_size))
        return {"val_nll": task_loss(metrics), "val_acc": metrics["acc"]}

    def train_step(self, step: int) -> dict[str, Any]:
        cfg, model = self.config, self.model
        lr = learning_rate(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.train()
        batch = self.data.batch(step, cfg.batch_size, cfg.seed).to(self.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        ce = continuation_nll(logits, batch.labels)
        kl_task = kl_general = None
        distill = cfg.distill
        if distill is not None and self.teacher is not None:
            with torch.no_grad():
                dense = self.teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            kl_task = distill_kl(logits, dense, batch.attention_mask, distill.temperature)
            general = self.data.general_batch(step, distill.general_batch)
            if general is not None and distill.general_mix > 0:
                general = general.to(self.device)
                with torch.no_grad():
                    dense_general = self.teacher(input_ids=general, use_cache=False).logits
                kl_general = distill_kl(model(input_ids=general, use_cache=False).logits, dense_general, None,
                                        distill.temperature)
        loss = combined(ce, kl_task, kl_general, distill)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        row: dict[str, Any] = {"step": step, "loss": float(loss.detach()), "ce": float(ce.detach()), "lr": lr,
                               "tokens": batch.target_tokens}
        if kl_task is not None:
            row["kl_task"] = float(kl_task.detach())
        if kl_general is not None:
            row["kl_general"] = float(kl_general.detach())
        return row

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, progress: Progress) -> None:
        Checkpoint(progress, adapter_state(self.model), self.best, adam_state(self.optimizer, self.names),
                   torch.get_rng_state()).save(self.out.checkpoint_path)

    def _restore(self, ckpt: Checkpoint) -> Progress:
        load_adapter_state(self.model, ckpt.adapters)
        restore_adam(self.optimizer, self.names, ckpt.adam)
        torch.set_rng_state(ckpt.rng)
        self.best = dict(ckpt.best)
        self.out.truncate_history(ckpt.progress.step)
        log.info("resumed %s at step %d (best step %d)", self.out.path, ckpt.progress.step, ckpt.progress.best_step)
        return ckpt.progress

    # ------------------------------------------------------------------ the loop
    def run(self, on_step: Progressed | None = None, stop_after: int | None = None) -> Progress:
        """Train to the end (or to early stopping); ``stop_after``: return after that step's
        checkpoint as if killed there (tests)."""
        cfg = self.config
        ckpt = self.out.checkpoint()
        if ckpt is not None:
            progress = self._restore(ckpt)
        else:
            self.out.history_path.unlink(missing_ok=True)
            start = time.perf_counter()
            measured = self.validate()
            self.best = adapter_state(self.model)
            progress = Progress(best=measured["val_nll"])
            row = {"step": 0, **measured, "seconds": time.perf_counter() - start}
            self.out.append_history(row)
            if on_step is not None:
                on_step(row, progress)
        step = progress.step
        while not progress.done:
            step += 1
            start = time.perf_counter()
            row = self.train_step(step)
            progress = replace(progress, step=step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                measured = self.validate()
                row.update(measured)
                if measured["val_nll"] < progress.best:
                    self.best = adapter_state(self.model)
                    progress = replace(progress, best=measured["val_nll"], best_step=step, since_best=0)
                else:
                    progress = replace(progress, since_best=progress.since_best + 1)
                if cfg.patience is not None and progress.since_best >= cfg.patience:
                    progress = replace(progress, done=True)
                    row["stopped"] = f"no improvement in {cfg.patience} validations"
            if step >= cfg.steps:
                progress = replace(progress, done=True)
            row["seconds"] = time.perf_counter() - start
            self.out.append_history(row)
            if step % cfg.checkpoint_every == 0 or progress.done:
                self._checkpoint(progress)
            if on_step is not None:
                on_step(row, progress)
            if stop_after is not None and step >= stop_after and not progress.done:
                break
        return progress
