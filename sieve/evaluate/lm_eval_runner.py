"""lm-eval's own evaluation of a model sieve already holds in memory.

sieve's fast scorer (:mod:`sieve.evaluate.loglik`) reads the same requests lm-eval builds; this
module is the cross-check and the door to every other lm-eval task: ``simple_evaluate`` on an
``HFLM(pretrained=model, tokenizer=tokenizer)`` wrapped around sieve's loaded (possibly pruned in
memory) model, so nothing is loaded twice or downloaded. The tokenizer is passed explicitly (HFLM
would otherwise ask the hub for it), ``bootstrap_iters=0`` skips the standard-error bootstrap, and
``max_length`` is sieve's (2048) so both scorers truncate contexts alike.

Task specs resolve offline, the way ``sieve`` resolves ``--task``:

* ``rotten_tomatoes`` (built in) → the YAML that :func:`~sieve.data.tasks.materialize_rotten_tomatoes`
  generates (task ``sieve_rotten_tomatoes``), found through ``TaskManager(include_path=...)``;
* a task YAML path → its folder as an include path, its ``task:`` name;
* anything else → a task or group registered in lm-eval (indexing lm-eval's own YAMLs, ~5 s).

``--limit N`` is lm-eval's: the first ``N`` documents of the evaluation split. sieve's fast path
caps its test split with a seeded subset instead, so the two agree on the same documents (all of
them, or the first ``N`` of a split no larger than sieve's cap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sieve.data.tasks import BUILTIN_TASKS, materialize_rotten_tomatoes
from sieve.errors import SieveError
from sieve.evaluate.quality import MAX_LENGTH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LmEvalTask:
    spec: str  # as the user gave it
    name: str  # lm-eval's task name
    include_path: Path | None  # folder to index, or None for lm-eval's registry


class _IgnoreTags(yaml.SafeLoader):
    """Safe YAML loader that accepts (and ignores) lm-eval's ``!function`` tags."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def _yaml_task_name(path: Path) -> str:
    try:
        cfg = yaml.load(path.read_text(), Loader=_IgnoreTags)  # noqa: S506 (tags are ignored)
    except yaml.YAMLError as exc:
        raise SieveError(f"task YAML {path} does not parse: {getattr(exc, 'problem', None) or exc}") from None
    name = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(name, str):
        raise SieveError(f"{path} is not an lm-eval task YAML with a 'task:' name")
    return name


def resolve_task(spec: str) -> LmEvalTask:
    """Built-in name, YAML path or registered lm-eval name → (task name, include path)."""
    if spec in BUILTIN_TASKS:
        path = materialize_rotten_tomatoes()
        return LmEvalTask(spec, _yaml_task_name(path), path.parent)
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SieveError(f"task YAML not found: {path}")
        return LmEvalTask(spec, _yaml_task_name(path), path.resolve().parent)
    return LmEvalTask(spec, spec, None)


def parse_task_list(text: str) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]``; an empty entry is an error."""
    specs = [t.strip() for t in text.split(",")]
    if not all(specs):
        raise SieveError(f"--tasks must be a comma-separated list of task names or YAML paths, got {text!r}")
    return specs


def _task_manager(tasks: Sequence[LmEvalTask]) -> Any:
    from lm_eval.tasks import TaskManager

    include = sorted({str(t.include_path) for t in tasks if t.include_path is not None})
    registry = any(t.include_path is None for t in tasks)
    manager = TaskManager(include_path=include or None, include_defaults=registry)
    unknown = [t.name for t in tasks if t.name not in manager.all_tasks and t.name not in manager.all_groups]
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
    batch_size: int = 16,
    max_length: int = MAX_LENGTH,
) -> dict[str, dict[str, Any]]:
    """lm-eval results per task: ``{task name: {"spec", "n", metric: value, ...}}``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if limit is not None and limit < 1:
        raise SieveError(f"--limit must be at least 1, got {limit}")
    tasks = [resolve_task(s) for s in specs]
    manager = _task_manager(tasks)
    for noisy in ("lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    result = simple_evaluate(
        model=lm,
        tasks=[t.name for t in tasks],
        task_manager=manager,
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
        verbosity="ERROR",
    )
    spec_of = {t.name: t.spec for t in tasks}
    samples = result.get("n-samples", {})
    out: dict[str, dict[str, Any]] = {}
    for name, values in result["results"].items():
        n = samples.get(name, {}).get("effective")
        out[name] = {"spec": spec_of.get(name, name), "n": n, **_metrics(values)}
    return out
