"""``prune_model``: one config in, one pruned Hugging Face folder out.

Steps: load the workspace, collect (or reuse) the statistics the method needs, build the
allocation (uniform, or read from a ``sieve.allocation/v1`` file and checked against the model),
apply it in place and save a plain safetensors folder with the allocation beside it. The folder is
written to a temporary sibling and renamed, so a crash never leaves half a model.

Every command that applies an allocation file to a model (``prune --allocation``, ``export``,
``eval`` of a run or an allocation) reads it with :func:`read_allocation` and checks it with
:func:`check_allocation` — the one place that refuses a file made for another model, naming the
difference (a module the model lacks; or both weight hashes). A run directory stands for its
``best_allocation.json``; its ``config.yaml`` supplies the model and its ``stats/`` the statistics,
so exporting a search result never recomputes calibration statistics.

The pieces are separate so that other commands can reuse them: :func:`prune_in_place` prunes an
already-open workspace (``eval`` of an allocation, the exporters), :func:`save_pruned` writes the
folder, :func:`prune_with_masks` re-applies exported binary masks (``prune --masks``).
"""

from __future__ import annotations

import difflib
import logging
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sieve.calibrate import StatsTimings, ensure_stats
from sieve.config import MethodConfig, PruneConfig, SearchConfig, digest, from_dict, load_yaml, to_dict
from sieve.errors import SieveError
from sieve.io import write_json
from sieve.models.arch import Matrix
from sieve.prune.allocation import Allocation, weights_hash
from sieve.prune.mask import UNSTRUCTURED, Pattern
from sieve.prune.pruner import ModelPruner, achieved_sparsity
from sieve.resources import cache_dir
from sieve.scores.base import ScoringMethod
from sieve.stats import CalibrationStats, MatrixStats
from sieve.workspace import Workspace

log = logging.getLogger(__name__)

RUN_ALLOCATION = "best_allocation.json"
# Provenance keys that describe the file itself, not where the allocation came from.
_FORMAT_KEYS = ("format", "sieve_version", "pattern", "modules", "module_patterns")


@dataclass(frozen=True)
class AllocationSource:
    """An allocation file as read: the allocation, its JSON body and where it came from.

    ``run_dir`` is set when the user named a search run directory (then ``path`` is its
    ``best_allocation.json``, and the run's ``config.yaml`` and ``stats/`` are available).
    """

    allocation: Allocation
    body: dict[str, Any]
    path: Path
    run_dir: Path | None = None

    @property
    def model(self) -> str | None:
        """The model the allocation was made for: the run's model spec, else the file's ``model``."""
        if self.run_dir is not None:
            return self.run_config().model
        return self.body.get("model")

    @property
    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in self.body.items() if k not in _FORMAT_KEYS}

    def run_config(self) -> SearchConfig:
        if self.run_dir is None:
            raise SieveError(f"{self.path} is an allocation file, not a run directory")
        return from_dict(SearchConfig, load_yaml(self.run_dir / "config.yaml"))

    def method_config(self) -> MethodConfig:
        """The scoring method that made the allocation (the file's ``method``, else the run's space)."""
        method = self.body.get("method")
        if isinstance(method, dict) and method.get("name"):
            return from_dict(MethodConfig, dict(method), "method")
        if self.run_dir is not None:
            from sieve.search.space import SpaceSpec

            return SpaceSpec.load(self.run_config().space).method
        raise SieveError(f"allocation {self.path} records no scoring method ('method' field); give one with --method")


def read_allocation(path: str | Path) -> AllocationSource:
    """Read a ``sieve.allocation/v1`` file, or a run directory's ``best_allocation.json``."""
    path = Path(path)
    run_dir = None
    if path.is_dir():
        if not (path / "config.yaml").exists():
            raise SieveError(f"{path} is a folder but not a sieve run directory (no config.yaml)")
        if not (path / RUN_ALLOCATION).exists():
            raise SieveError(f"run {path} has no {RUN_ALLOCATION} yet (no generation finished)")
        run_dir, path = path, path / RUN_ALLOCATION
    allocation, body = Allocation.load(path)
    return AllocationSource(allocation, body, path, run_dir)


def check_allocation(
    source: AllocationSource, matrices: Sequence[Matrix], model_id: str, dense_hash: str | None = None
) -> None:
    """Refuse an allocation made for another model, naming the difference.

    Module names differ → the first allocation module the model lacks (and the model's closest
    name); the weights hash differs → both hashes. The hash covers the prunable matrices' names,
    shapes and dense bytes (:func:`~sieve.prune.allocation.weights_hash`), so it must be taken
    before anything is pruned (``dense_hash``: that hash, when the caller has it already).
    """
    names = [m.name for m in matrices]
    known = set(names)
    unknown = [n for n in source.allocation.sparsity if n not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; closest module there: {close[0]!r}" if close else ""
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise SieveError(
            f"allocation {source.path} names module {unknown[0]!r} that model {model_id!r} lacks{more}{hint}"
        )
    source.allocation.check_against(matrices)
    expected = source.body.get("weights_hash")
    if expected:
        actual = dense_hash or weights_hash(matrices)
        if expected != actual:
            raise SieveError(
                f"allocation {source.path} was made for model {source.body.get('model')!r} with weights hash "
                f"{expected}, but {model_id!r} hashes to {actual}"
            )


def load_allocation_for(
    path: str | Path | AllocationSource, ws: Workspace, dense_hash: str | None = None
) -> Allocation:
    """Read an allocation (file or run directory) and refuse one made for another model."""
    source = path if isinstance(path, AllocationSource) else read_allocation(path)
    check_allocation(source, ws.matrices, ws.loaded.model_id, dense_hash)
    return source.allocation


def prune_config_for(
    source: AllocationSource,
    *,
    model: str | None = None,
    task: str | None = None,
    general: str | None = None,
    dtype: str | None = None,
    device: str = "auto",
) -> PruneConfig:
    """The ``sieve prune`` config that reproduces ``source`` on its model.

    Model, task, general corpus, dtype, seed and calibration sizes come from the run's
    ``config.yaml`` (a run directory) or the file's ``model`` / ``task`` fields; the method from
    the file's ``method``. Arguments that are not ``None`` override them.
    """
    spec = model or source.model
    if not spec:
        raise SieveError(f"allocation {source.path} records no model; give one with --model")
    fields: dict[str, Any] = {
        "model": spec,
        "method": source.method_config(),
        "allocation": str(source.run_dir or source.path),
        "device": device,
    }
    if source.run_dir is not None:
        run = source.run_config()
        fields.update(task=run.task, general=run.general, dtype=run.dtype, seed=run.seed, calibration=run.calibration)
    elif source.body.get("task"):
        fields["task"] = source.body["task"]
    for key, value in (("task", task), ("general", general), ("dtype", dtype)):
        if value:
            fields[key] = value
    return PruneConfig(**fields)


def stats_dir_for(model_id: str) -> Path:
    return cache_dir() / "stats" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def run_stats(run_dir: Path, method: ScoringMethod, matrices: Sequence[Matrix]) -> dict[str, MatrixStats] | None:
    """A run's own statistics (``RUN/stats/<source>.safetensors``) for ``matrices``, or ``None``
    when the run lacks a source, a matrix or a Hessian the method needs."""
    loaded: dict[str, CalibrationStats] = {}
    for source in method.sources:
        path = run_dir / "stats" / f"{source}.safetensors"
        if not path.exists():
            return None
        loaded[source] = CalibrationStats.load(path)
        if method.needs_hessian and not loaded[source].has_hessian:
            return None
    per_matrix = {}
    for m in matrices:
        if any(m.name not in s.per_matrix for s in loaded.values()):
            return None
        per_matrix[m.name] = MatrixStats(
            general=loaded["general"][m.name] if "general" in loaded else None,
            task=loaded["task"][m.name] if "task" in loaded else None,
        )
    return per_matrix


def uses_run_stats(config: PruneConfig, source: AllocationSource | None) -> bool:
    """Whether the statistics will come from the allocation's run directory (no data needed)."""
    if source is None or source.run_dir is None:
        return False
    method = config.method.build()
    if not method.sources:
        return True
    return all((source.run_dir / "stats" / f"{s}.safetensors").exists() for s in method.sources)


@dataclass
class PrunedModel:
    """A workspace whose model is pruned in memory; ``pruner.restore()`` brings the dense weights back."""

    ws: Workspace
    allocation: Allocation
    method: ScoringMethod
    pruner: ModelPruner
    provenance: dict[str, Any]
    timings: StatsTimings
    prune_seconds: float
    source: AllocationSource | None = None

    @property
    def stats(self) -> Mapping[str, MatrixStats]:
        return self.pruner.stats


def prune_in_place(
    ws: Workspace, config: PruneConfig, *, source: AllocationSource | None = None, task_texts: Sequence[str] | None = None
) -> PrunedModel:
    """Prune ``ws.model`` in place by ``source`` (checked) or by ``config``'s uniform sparsity.

    Statistics: the run's ``stats/`` when ``source`` is a run directory that has them, otherwise
    :func:`~sieve.calibrate.ensure_stats` (cached by fingerprint) on ``ws.corpus`` and
    ``task_texts`` (default: the calibration texts of ``ws.task``).
    """
    method = config.method.build()
    pattern = Pattern.parse(config.pattern)
    dense_hash = weights_hash(ws.matrices)
    if source is not None:
        allocation = load_allocation_for(source, ws, dense_hash)
    else:
        for m in ws.matrices:
            pattern.check(m.name, m.shape[1])
        allocation = Allocation.uniform(ws.matrices, config.sparsity, pattern)
    provenance = {"model": ws.loaded.model_id, "weights_hash": dense_hash}
    stats = None
    matrices = list(ws.matrices)
    if source is not None and source.run_dir is not None:
        # Only the allocated matrices are touched; a run's statistics cover just its search space.
        matrices = [m for m in ws.matrices if allocation.sparsity.get(m.name, 0.0) > 0]
        stats = run_stats(source.run_dir, method, matrices)
        if stats is not None:
            log.info("using the statistics of run %s", source.run_dir)
            timings = StatsTimings({s: 0.0 for s in method.sources}, {})
    if stats is None:
        if task_texts is None and "task" in method.sources:
            if ws.task is None:
                raise SieveError(f"method {method.name} needs task statistics but no task was loaded")
            task_texts = ws.task.calibration_texts()
        stats, timings = ensure_stats(
            ws.model,
            ws.tokenizer,
            matrices,
            method.sources,
            model_id=ws.loaded.model_id,
            cfg=config.calibration,
            general=ws.corpus,
            task_texts=task_texts,
            task_name=config.task,
            hessian=method.needs_hessian,
            stats_dir=stats_dir_for(ws.loaded.model_id),
        )
    pruner = ModelPruner(matrices, method, stats)
    start = time.perf_counter()
    pruner.apply(allocation)
    return PrunedModel(ws, allocation, method, pruner, provenance, timings, time.perf_counter() - start, source)


def open_workspace(config: PruneConfig, source: AllocationSource | None = None, **caps: Any) -> Workspace:
    """The workspace ``prune_in_place`` needs: task / general data only when statistics must be computed."""
    method = config.method.build()
    from_run = uses_run_stats(config, source)
    return Workspace.open(
        config.model,
        task=config.task if "task" in method.sources and not from_run else None,
        general=config.general if "general" in method.sources and not from_run else None,
        dtype=config.dtype,
        device=config.device,
        seed=config.seed,
        max_calibration=config.calibration.task_examples,
        **caps,
    )


def save_pruned(ws: Workspace, allocation: Allocation, out: Path, provenance: Mapping[str, Any], summary: Mapping[str, Any]) -> Path:
    """Write model + tokenizer + ``allocation.json`` + ``prune.json`` to ``out`` atomically.

    Everything goes to ``OUT.partial`` first, which is renamed to ``out`` at the end.
    """
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ws.model.save_pretrained(tmp)
    ws.tokenizer.save_pretrained(tmp)
    (tmp / "sieve_model_id").write_text(ws.loaded.model_id + "\n")
    allocation.save(tmp / "allocation.json", **provenance)
    write_json(tmp / "prune.json", dict(summary))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def check_output_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SieveError(f"output folder {out} exists and is not empty")


def prune_model(config: PruneConfig, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    check_output_folder(out)
    source = read_allocation(config.allocation) if config.allocation else None
    ws = open_workspace(config, source)
    pruned = prune_in_place(ws, config, source=source)
    achieved = achieved_sparsity(ws.matrices)
    provenance = {
        **(source.provenance if source is not None else {}),
        **pruned.provenance,
        "method": pruned.method.describe(),
        "budget": pruned.allocation.weighted_sparsity(ws.matrices),
        "achieved_sparsity": achieved,
        "config_digest": digest(config),
    }
    summary = {
        "model": ws.loaded.model_id,
        "method": pruned.method.describe(),
        "pattern": str(Pattern.parse(config.pattern)),
        "allocation": str(source.path) if source is not None else None,
        "achieved_sparsity": achieved,
        "calibration_seconds": pruned.timings.seconds,
        "calibration_tokens": pruned.timings.tokens,
        "prune_seconds": pruned.prune_seconds,
        "seconds": time.perf_counter() - start,
        "config": to_dict(config),
    }
    save_pruned(ws, pruned.allocation, out, provenance, summary)
    return summary


def apply_masks(matrices: Sequence[Matrix], masks: Mapping[str, torch.Tensor]) -> Allocation:
    """``W ← W ⊙ M`` for every mask (in the module's own weight layout); refuses mismatches.

    Every mask must name a prunable matrix of the model and have its weight's exact shape; the
    returned allocation holds each matrix's measured mask sparsity (zeros / numel).
    """
    by_name = {m.name: m for m in matrices}
    for name, mask in masks.items():
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; closest module there: {close[0]!r}" if close else ""
            raise SieveError(f"masks name module {name!r} that the model lacks{hint}")
        shape = tuple(by_name[name].module.weight.shape)
        if tuple(mask.shape) != shape:
            raise SieveError(f"mask of {name} has shape {tuple(mask.shape)}, the model's weight {shape}")
    sparsity = {}
    with torch.no_grad():
        for name, mask in masks.items():
            w = by_name[name].module.weight
            keep = mask.to(device=w.device, dtype=torch.bool)
            w.copy_(torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device)))
            sparsity[name] = 1.0 - float(keep.sum()) / keep.numel()
    return Allocation(sparsity, UNSTRUCTURED)


def prune_with_masks(model: str, masks_path: Path, out: Path, *, dtype: str = "float32", device: str = "auto") -> dict[str, Any]:
    """``prune --masks``: apply exported masks to ``model`` (e.g. a fine-tune of the same base)."""
    from sieve.export.masks import read_masks

    start = time.perf_counter()
    check_output_folder(out)
    masks, meta = read_masks(masks_path)
    ws = Workspace.open(model, task=None, general=None, dtype=dtype, device=device)
    dense_hash = weights_hash(ws.matrices)
    allocation = apply_masks(ws.matrices, masks)
    achieved = achieved_sparsity(ws.matrices)
    provenance = {
        "model": ws.loaded.model_id,
        "weights_hash": dense_hash,
        "masks": str(masks_path),
        "masks_model": meta.get("model"),
        "masks_weights_hash": meta.get("weights_hash"),
        "budget": allocation.weighted_sparsity(ws.matrices),
        "achieved_sparsity": achieved,
    }
    summary = {"model": ws.loaded.model_id, "masks": str(masks_path), "achieved_sparsity": achieved,
               "pattern": meta.get("pattern", "unstructured"), "seconds": time.perf_counter() - start}
    save_pruned(ws, allocation, out, provenance, summary)
    return summary
