"""``prune_model``: one config in, one pruned Hugging Face folder out.

Steps: load the workspace, collect (or reuse from the cache) the statistics the method needs, build
the allocation (uniform, or read from a ``sieve.allocation/v1`` file and checked against the
model), apply it in place and save a plain safetensors folder with the allocation beside it. The
folder is written to a temporary sibling and renamed, so a crash never leaves half a model.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from sieve.calibrate import ensure_stats
from sieve.config import PruneConfig, digest, to_dict
from sieve.errors import SieveError
from sieve.io import write_json
from sieve.prune.allocation import Allocation, weights_hash
from sieve.prune.mask import Pattern
from sieve.prune.pruner import ModelPruner, achieved_sparsity
from sieve.resources import cache_dir
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


def load_allocation_for(path: str | Path, ws: Workspace) -> Allocation:
    """Read an allocation and refuse one made for another model (hash or module names differ)."""
    allocation, body = Allocation.load(path)
    allocation.check_against(ws.matrices)
    expected = body.get("weights_hash")
    if expected and expected != weights_hash(ws.matrices):
        raise SieveError(
            f"allocation {path} was made for model {body.get('model')!r} with weights hash {expected}, "
            f"but {ws.loaded.model_id!r} hashes to {weights_hash(ws.matrices)}"
        )
    return allocation


def stats_dir_for(model_id: str) -> Path:
    return cache_dir() / "stats" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def prune_model(config: PruneConfig, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    pattern = Pattern.parse(config.pattern)
    method = config.method.build()
    if out.exists() and any(out.iterdir()):
        raise SieveError(f"output folder {out} exists and is not empty")
    ws = Workspace.open(
        config.model,
        task=config.task if "task" in method.sources else None,
        general=config.general if "general" in method.sources else None,
        dtype=config.dtype,
        device=config.device,
        seed=config.seed,
        max_calibration=config.calibration.task_examples,
    )
    if config.allocation:
        allocation = load_allocation_for(config.allocation, ws)
    else:
        for m in ws.matrices:
            pattern.check(m.name, m.shape[1])
        allocation = Allocation.uniform(ws.matrices, config.sparsity, pattern)
    provenance = {"model": ws.loaded.model_id, "weights_hash": weights_hash(ws.matrices)}
    stats, timings = ensure_stats(
        ws.model,
        ws.tokenizer,
        ws.matrices,
        method.sources,
        model_id=ws.loaded.model_id,
        cfg=config.calibration,
        general=ws.corpus,
        task_texts=ws.task.calibration_texts() if ws.task else None,
        task_name=config.task,
        hessian=method.needs_hessian,
        stats_dir=stats_dir_for(ws.loaded.model_id),
    )
    pruner = ModelPruner(ws.matrices, method, stats)
    prune_start = time.perf_counter()
    pruner.apply(allocation)
    prune_seconds = time.perf_counter() - prune_start
    achieved = achieved_sparsity(ws.matrices)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ws.model.save_pretrained(tmp)
    ws.tokenizer.save_pretrained(tmp)
    (tmp / "sieve_model_id").write_text(ws.loaded.model_id + "\n")
    allocation.save(
        tmp / "allocation.json",
        **provenance,
        method=method.describe(),
        budget=allocation.weighted_sparsity(ws.matrices),
        achieved_sparsity=achieved,
        config_digest=digest(config),
    )
    summary = {
        "model": ws.loaded.model_id,
        "method": method.describe(),
        "pattern": str(pattern),
        "achieved_sparsity": achieved,
        "calibration_seconds": timings.seconds,
        "calibration_tokens": timings.tokens,
        "prune_seconds": prune_seconds,
        "seconds": time.perf_counter() - start,
        "config": to_dict(config),
    }
    write_json(tmp / "prune.json", summary)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return summary
