"""``evaluate_models``: the quality report of a model (and optionally its dense origin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sieve.config import EvalConfig, to_dict
from sieve.evaluate.quality import QualityProbe
from sieve.io import write_json
from sieve.workspace import Workspace


def dense_origin(model: str) -> str | None:
    """The model a pruned folder was made from (its ``allocation.json`` provenance)."""
    path = Path(model) / "allocation.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("model")


def evaluate_models(config: EvalConfig, *, baseline: bool = False, output: Path | None = None) -> tuple[list[dict[str, Any]], Path]:
    ws = Workspace.open(
        config.model,
        task=config.task,
        general=config.general,
        dtype=config.dtype,
        device=config.device,
        seed=config.seed,
        max_test=config.evaluation.test_examples,
    )
    probe = QualityProbe(ws.tokenizer, ws.task, ws.corpus, config.evaluation)
    rows = [{"method": Path(config.model).name or config.model, "model": config.model, **probe.measure(ws.model, ws.matrices).as_dict()}]
    origin = dense_origin(config.model) if baseline else None
    if baseline and origin:
        dense = Workspace.open(origin, task=None, general=None, dtype=config.dtype, device=config.device)
        rows.insert(0, {"method": "dense", "model": origin, **probe.measure(dense.model, dense.matrices).as_dict()})
    if output is None:
        folder = Path(config.model)
        output = folder / "eval.json" if folder.is_dir() else Path("runs") / f"eval-{folder.name}.json"
    write_json(output, {"config": to_dict(config), "rows": rows})
    return rows, output
