"""``evaluate_models``: the quality report of a model, a search run or an allocation file.

A target is one of

* a model: a pruned folder, a built-in name, an HF folder or a ``.gguf`` — loaded and measured;
* a run directory or a ``sieve.allocation/v1`` JSON file — the allocation's model (the run's
  ``config.yaml`` model, else the file's ``model``) is loaded dense, checked against the
  allocation (:func:`~sieve.prune.api.check_allocation`) and pruned in memory with the
  allocation's own method and statistics; no pruned folder is written.

Every row holds sieve's fast-path report (task acc / NLL on sieve's test split, held-out general
perplexity, measured sparsity); with ``lm_eval_tasks`` also lm-eval's own ``simple_evaluate``
results on the same in-memory model (:mod:`sieve.evaluate.lm_eval_runner`). ``baseline`` adds the
dense model: for a pruned folder its recorded origin, for a run or an allocation the same
workspace with the dense weights restored (bit-identical, no second load).

Results go to ``FOLDER/eval.json`` for a model folder, ``RUN/eval.json`` for a run,
``NAME-eval.json`` beside an allocation file, else ``runs/eval-NAME.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sieve.config import EvalConfig, replace, to_dict
from sieve.data.tasks import load_task
from sieve.evaluate.quality import QualityProbe
from sieve.io import write_json
from sieve.models.arch import Matrix
from sieve.prune.api import AllocationSource, prune_config_for, prune_in_place, read_allocation, uses_run_stats
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


def dense_origin(model: str) -> str | None:
    """The model a pruned folder was made from (its ``allocation.json`` provenance)."""
    path = Path(model) / "allocation.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("model")


def is_allocation_target(target: str) -> bool:
    """A run directory (``config.yaml`` + allocation) or a JSON file: evaluated by applying it."""
    path = Path(target)
    if path.is_dir():
        return (path / "config.yaml").exists() and not (path / "config.json").exists()
    return path.suffix == ".json" and path.is_file()


@dataclass(frozen=True)
class EvalTarget:
    """What ``sieve eval`` was pointed at, resolved."""

    target: str
    source: AllocationSource | None  # set for a run directory or an allocation file

    @property
    def label(self) -> str:
        if self.source is None:
            return Path(self.target).name or self.target
        return "sieve-search" if self.source.run_dir is not None else self.source.path.stem

    def default_output(self) -> Path:
        if self.source is not None:
            if self.source.run_dir is not None:
                return self.source.run_dir / "eval.json"
            return self.source.path.with_name(f"{self.source.path.stem}-eval.json")
        folder = Path(self.target)
        return folder / "eval.json" if folder.is_dir() else Path("runs") / f"eval-{folder.name}.json"


def resolve_target(target: str) -> EvalTarget:
    return EvalTarget(target, read_allocation(target) if is_allocation_target(target) else None)


def eval_config_for(target: str, *, task: str | None = None, general: str | None = None, **fields: Any) -> EvalConfig:
    """An :class:`EvalConfig`; task and general corpus default to a run's own, else the built-ins."""
    defaults = EvalConfig()
    if is_allocation_target(target) and Path(target).is_dir():
        run = read_allocation(target).run_config()
        defaults = replace(defaults, task=run.task, general=run.general)
    return replace(defaults, model=target, task=task, general=general, **fields)


def _measure(label: str, model_id: str, model: torch.nn.Module, tokenizer: Any, matrices: Sequence[Matrix], probe: QualityProbe,
             lm_eval_tasks: Sequence[str], limit: int | None, batch_size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"method": label, "model": model_id, **probe.measure(model, matrices).as_dict()}
    if lm_eval_tasks:
        from sieve.evaluate.lm_eval_runner import run_lm_eval

        row["lm_eval"] = run_lm_eval(model, tokenizer, lm_eval_tasks, limit=limit, batch_size=batch_size)
    return row


def evaluate_models(
    config: EvalConfig,
    *,
    baseline: bool = False,
    output: Path | None = None,
    lm_eval_tasks: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    target = resolve_target(config.model)
    measure_args = (lm_eval_tasks, limit, config.evaluation.batch_size)
    if target.source is None:
        ws = Workspace.open(config.model, task=config.task, general=config.general, dtype=config.dtype,
                            device=config.device, seed=config.seed, max_test=config.evaluation.test_examples)
        probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
        rows = [_measure(target.label, config.model, ws.model, ws.tokenizer, ws.matrices, probe, *measure_args)]
        origin = dense_origin(config.model) if baseline else None
        if origin:
            dense = Workspace.open(origin, task=None, general=None, dtype=config.dtype, device=config.device)
            rows.insert(0, _measure("dense", origin, dense.model, dense.tokenizer, dense.matrices, probe, *measure_args))
    else:
        source = target.source
        prune_config = prune_config_for(
            source, task=None if source.run_dir else config.task, general=None if source.run_dir else config.general,
            dtype=config.dtype, device=config.device,
        )
        ws = Workspace.open(prune_config.model, task=config.task, general=config.general, dtype=prune_config.dtype,
                            device=config.device, seed=prune_config.seed, max_calibration=prune_config.calibration.task_examples,
                            max_test=config.evaluation.test_examples)
        task_texts = None
        method = prune_config.method.build()
        if "task" in method.sources and not uses_run_stats(prune_config, source) and prune_config.task != config.task:
            task_texts = load_task(prune_config.task, seed=prune_config.seed, max_calibration=prune_config.calibration.task_examples,
                                   max_validation=1, max_test=1).calibration_texts()
        probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
        pruned = prune_in_place(ws, prune_config, source=source, task_texts=task_texts)
        model_id = ws.loaded.model_id
        rows = [_measure(target.label, model_id, ws.model, ws.tokenizer, ws.matrices, probe, *measure_args)]
        if baseline:
            pruned.pruner.restore()
            rows.insert(0, _measure("dense", model_id, ws.model, ws.tokenizer, ws.matrices, probe, *measure_args))
    output = output or target.default_output()
    report = {"config": to_dict(config), "lm_eval": {"tasks": list(lm_eval_tasks), "limit": limit} if lm_eval_tasks else None,
              "rows": rows}
    write_json(output, report)
    return rows, output
