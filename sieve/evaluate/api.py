"""``sieve eval``: the quality report of a model, a search run or an allocation file.

* a model (a pruned folder, a built-in name, an HF folder or a ``.gguf``) is loaded and measured;
* a run directory or a ``sieve.allocation/v1`` file is realised in memory on its dense model
  (:mod:`sieve.evaluate.target`): checked against it, pruned with the allocation's own method and
  statistics; no pruned folder is written.

Every row holds sieve's fast-path report (task acc / NLL on sieve's test split, held-out general
perplexity, measured sparsity); with ``lm_eval_tasks`` also lm-eval's own ``simple_evaluate``
results on the same in-memory model (:mod:`sieve.evaluate.lm_eval_runner`). ``baseline`` adds the
dense model: for a pruned folder its recorded origin, for a run or a file the same workspace with
the dense weights restored (bit-identical, no second load).

Results go to ``FOLDER/eval.json`` for a model folder, ``RUN/eval.json`` for a run,
``NAME-eval.json`` beside an allocation file, else ``runs/eval-NAME.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sieve.config import to_dict
from sieve.data.splits import SplitSpec, load_task
from sieve.evaluate.config import EvalConfig
from sieve.evaluate.target import AllocationTarget, is_allocation_target, open_target, paths_read, realise_target
from sieve.io import check_output, write_json
from sieve.metrics.quality import QualityProbe
from sieve.prune.realise import sources_to_compute
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


def dense_origin(model: str) -> str | None:
    """The model a pruned folder was made from (its ``allocation.json`` provenance)."""
    path = Path(model) / "allocation.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("model")
    except (ValueError, AttributeError):
        return None


def _output(config: EvalConfig, target: AllocationTarget | None) -> Path:
    if config.output is not None:
        return config.output
    if target is not None:
        return target.run.eval_path if target.run is not None else target.path.with_name(f"{target.path.stem}-eval.json")
    folder = Path(config.model)
    return folder / "eval.json" if folder.is_dir() else Path("runs") / f"eval-{folder.name}.json"


def _check_output(config: EvalConfig, target: AllocationTarget | None) -> Path:
    """Where the results go, checked before any evaluation: a file (not a folder), and none of the
    files being read (results beside a model or a run are expected, so only files count here)."""
    output = _output(config, target)
    given = config.model_fields_set if target is not None else {"task", "general"}
    read = paths_read(None if target else config.model, config.task if "task" in given else None,
                      config.general if "general" in given else None, target=target)
    files = {what: path for what, path in read.items() if path is not None and path.is_file()}
    if target is not None:
        files["the allocation"] = target.path
    return check_output(output, files, force=True, writes="file", flag="--json")


def measure_row(label: str, model_id: str, model, tokenizer, matrices, probe: QualityProbe,
                config: EvalConfig) -> dict[str, Any]:
    """One row of ``sieve eval``: the probe's report of ``model`` (and lm-eval's, with ``--tasks``)."""
    row: dict[str, Any] = {"method": label, "model": model_id, **probe.measure(model, matrices).as_dict()}
    if config.lm_eval_tasks:
        from sieve.evaluate.lm_eval_runner import run_lm_eval

        row["lm_eval"] = run_lm_eval(model, tokenizer, config.lm_eval_tasks, limit=config.limit,
                                     batch_size=config.evaluation.batch_size)
    return row


def _measure(label: str, model_id: str, ws: Workspace, probe: QualityProbe, config: EvalConfig) -> dict[str, Any]:
    return measure_row(label, model_id, ws.model, ws.tokenizer, ws.matrices, probe, config)


def evaluate(config: EvalConfig) -> tuple[list[dict[str, Any]], Path, EvalConfig]:
    """Measure ``config.model`` (and the dense baseline); write and return the rows."""
    split = SplitSpec(seed=config.seed, max_test=config.evaluation.test_examples)
    target = open_target(config.model) if is_allocation_target(config.model) else None
    output = _check_output(config, target)
    if target is None:
        ws = Workspace.open(config.model, task=config.task, general=config.general, dtype=config.dtype,
                            device=config.device, split=split, base_dir=Path(config.workdir))
        probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
        rows = [_measure(Path(config.model).name or config.model, config.model, ws, probe, config)]
        origin = dense_origin(config.model) if config.baseline else None
        if origin:
            dense = Workspace.open(origin, task=None, general=None, dtype=config.dtype, device=config.device)
            rows.insert(0, _measure("dense", origin, dense, probe, config))
    else:
        file = target.file
        given = config.model_fields_set
        config = config.model_copy(update={
            "task": config.task if "task" in given or not file.task else file.task,
            "general": config.general if "general" in given or not file.general else file.general,
        })
        ws = Workspace.open(file.model, task=config.task, general=config.general, dtype=file.dtype or config.dtype,
                            device=config.device, split=split,
                            base_dir=Path(file.workdir) if file.workdir and "task" not in given else Path(config.workdir))
        task_texts = None
        if "task" in sources_to_compute(file, target.store(file.model)) and (config.task != file.task or split != file.split):
            task_texts = load_task(file.task, file.split or SplitSpec(),
                                   base_dir=Path(file.workdir) if file.workdir else None).calibration_texts()
        probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
        pruned = realise_target(target, ws, task_texts)
        rows = [_measure(target.label, ws.model_id, ws, probe, config)]
        if config.baseline:
            pruned.pruner.restore()
            rows.insert(0, _measure("dense", ws.model_id, ws, probe, config))
    report = {"config": to_dict(config),
              "lm_eval": {"tasks": list(config.lm_eval_tasks), "limit": config.limit} if config.lm_eval_tasks else None,
              "rows": rows}
    write_json(output, report)
    return rows, output, config
