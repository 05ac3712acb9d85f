"""lm-eval's own evaluation of a model sieve already holds in memory.

sieve's fast scorer (:mod:`sieve.scoring`) reads the same requests lm-eval builds; this
module is the cross-check and the door to every other lm-eval task: ``simple_evaluate`` on an
``HFLM(pretrained=model, tokenizer=tokenizer)`` wrapped around sieve's loaded (possibly pruned in
memory) model, so nothing is loaded twice or downloaded. The tokenizer is passed explicitly (HFLM
would otherwise ask the hub for it), ``bootstrap_iters=0`` skips the standard-error bootstrap, and
``max_length`` is sieve's (2048) so both scorers truncate contexts alike.

Task specs resolve exactly as ``--task`` does (:func:`sieve.data.task_spec.resolve_task`): the
built-in ``rotten_tomatoes`` and YAML paths are handed to lm-eval by path, other names must be
registered in lm-eval (indexing lm-eval's own YAMLs, ~5 s).

``--limit N`` is lm-eval's: the first ``N`` documents of the evaluation split. sieve's fast path
caps its test split with a seeded subset instead, so the two agree on the same documents (all of
them, or the first ``N`` of a split no larger than sieve's cap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from sieve.data import lm_eval_compat
from sieve.data.task_spec import TaskRef, resolve_task
from sieve.errors import SieveError
from sieve.metrics.quality import MAX_LENGTH
from sieve.scoring.plan import BATCH_SIZE

log = logging.getLogger(__name__)


def _task_manager(refs: Sequence[TaskRef]) -> Any:
    manager = lm_eval_compat.task_manager(registered=any(r.registered for r in refs))
    unknown = [r.spec for r in refs if r.registered and r.name not in manager.all_tasks and r.name not in manager.all_groups]
    if unknown:
        raise SieveError(f"unknown lm-eval task {unknown[0]!r} (not built in, not a YAML path, not registered in lm-eval)")
    return manager


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.7, "acc_stderr,none": "N/A", "alias": ...}`` → ``{"acc": 0.7}``."""
    out = {}
    for key, value in values.items():
        metric, _, filt = key.partition(",")
        if "_stderr" in metric or metric == "sample_len" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric if filt in ("", "none") else f"{metric},{filt}"] = float(value)
    return out


def run_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    specs: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
) -> dict[str, dict[str, Any]]:
    """lm-eval results per task: ``{task name: {"spec", "n", metric: value, ...}}``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if limit is not None and limit < 1:
        raise SieveError(f"--limit must be at least 1, got {limit}")
    refs = [resolve_task(s) for s in specs]
    manager = _task_manager(refs)
    for noisy in ("lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    result = simple_evaluate(
        model=lm,
        tasks=[r.target for r in refs],
        task_manager=manager,
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
        verbosity="ERROR",
    )
    spec_of = {r.name: r.spec for r in refs}
    samples = result.get("n-samples", {})
    out: dict[str, dict[str, Any]] = {}
    for name, values in result["results"].items():
        n = samples.get(name, {}).get("effective")
        out[name] = {"spec": spec_of.get(name, name), "n": n, **_metrics(values)}
    return out
