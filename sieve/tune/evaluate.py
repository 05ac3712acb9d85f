"""``sieve eval TUNED``: the base (before tuning) and the tuned model, measured the same way.

Both rows come from one :class:`~sieve.metrics.quality.QualityProbe` (task test split, held-out
general perplexity, measured sparsity, parameter count), so they differ only by the tuning: the
base is rebuilt from the source the tuning recorded (a run realised as its export, or the exported
folder), the tuned model is the folder itself. ``--baseline dense`` adds the dense model first. The
task defaults to the tuning's own; results go to ``TUNED/eval.json`` (or ``--json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sieve.config import to_dict, validate
from sieve.data.splits import SplitSpec
from sieve.evaluate.api import measure_row
from sieve.evaluate.config import EvalConfig
from sieve.io import check_output, write_json
from sieve.metrics.quality import QualityProbe
from sieve.models.adapters import find_matrices
from sieve.tune.base import describe_source, open_base
from sieve.tune.config import TuneConfig
from sieve.tune.outdir import TuneDir
from sieve.workspace import Workspace


def _row(label: str, stage: str, model_id: str, model, probe: QualityProbe, config: EvalConfig, tokenizer) -> dict[str, Any]:
    return {"stage": stage, **measure_row(label, model_id, model, tokenizer, find_matrices(model), probe, config)}


def evaluate_tuned(config: EvalConfig) -> tuple[list[dict[str, Any]], Path, EvalConfig]:
    """Rows ``[dense?, before tuning, tuned]`` of the tuned folder ``config.model``; written and returned."""
    folder = TuneDir(config.model)
    summary = folder.summary()
    tuning = validate(TuneConfig, summary["config"], str(folder.summary_path))
    given = config.model_fields_set
    config = config.model_copy(update={"task": config.task if "task" in given else tuning.task,
                                       "general": config.general if "general" in given else tuning.general})
    output = check_output(config.output or folder.eval_path, {}, force=True, writes="file", flag="--json")
    base_dir = Path(config.workdir) if "task" in given else Path(tuning.workdir)
    split = SplitSpec(seed=config.seed, max_test=config.evaluation.test_examples)
    ws = Workspace.open(str(folder.path), task=config.task, general=config.general, dtype=tuning.dtype,
                        device=config.device, split=split, base_dir=base_dir)
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
    info = describe_source(tuning.source)
    base = open_base(info, device=config.device, dtype=tuning.dtype)
    rows = [_row("before tuning", "before", str(info.path), base.model, probe, config,
                 base.tokenizer)]
    del base
    rows.append(_row("after tuning", "after", str(folder.path), ws.model, probe, config, ws.tokenizer))
    if config.baseline and info.dense:
        dense = Workspace.open(info.dense, task=None, general=None, dtype=tuning.dtype, device=config.device)
        rows.insert(0, _row("dense", "dense", info.dense, dense.model, probe, config, dense.tokenizer))
    write_json(output, {"config": to_dict(config), "tuning": str(folder.path), "base": str(info.path),
                        "best_step": summary.get("best_step"), "rows": rows})
    return rows, output, config
