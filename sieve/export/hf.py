"""``hf`` / ``hf-merged``: pruned Hugging Face folders.

``hf``: the folder's per-module sparsity equals the allocation — each row of a matrix at sparsity
``s`` holds exactly ``int(cols · s)`` zeros (N:M: ``N`` of every ``M``) — and factorised matrices
are stored as their factors (:class:`~sieve.models.factorized.FactorizedLinear`, ``r·(out+in)``
values: a really smaller, faster model). A folder without factors loads with plain
``AutoModelForCausalLM.from_pretrained``; one with factors with :func:`sieve.load_pretrained`.
``hf-merged`` multiplies the factors back (``W = A_r B_r``) for tools that need the standard layout:
same quality, *no* size or speed gain. ``allocation.json`` beside the weights is the complete
``sieve.allocation/v1`` file (it reproduces the masks and factors), ``prune.json`` a summary. The
same writer serves ``sieve prune`` (a uniform allocation built from the flags, or an allocation
file) and ``sieve prune --masks`` (exported masks re-applied to, e.g., a fine-tune).
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from sieve.config import digest, to_dict
from sieve.errors import SieveError
from sieve.evaluate.target import AllocationTarget, open_target, open_workspace_for, paths_read, realise_target
from sieve.export.base import EXPORTERS, Exporter, ExportRequest
from sieve.io import check_output, replace_path, write_json
from sieve.models.factorized import factorise, record_ranks
from sieve.models.matrix import Matrix
from sieve.primitives.lowrank import LowRank
from sieve.primitives.mask import UNSTRUCTURED
from sieve.prune.allocation import Allocation, AllocationFile
from sieve.prune.config import PruneConfig
from sieve.prune.pruner import achieved_sparsity
from sieve.prune.realise import PrunedModel, realise
from sieve.stats.calibrate import CacheStore, ensure_stats
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


def write_folder(ws: Workspace, file: AllocationFile, out: Path, summary: Mapping[str, Any], *, force: bool) -> Path:
    """Model + tokenizer + ``allocation.json`` + ``prune.json``, written to a unique temporary
    folder and renamed to ``out`` (an existing ``out`` is replaced only with ``force``)."""

    def write(tmp: Path) -> None:
        ws.model.save_pretrained(tmp)
        ws.tokenizer.save_pretrained(tmp)
        (tmp / "sieve_model_id").write_text(ws.model_id + "\n")
        file.write(tmp / "allocation.json")
        write_json(tmp / "prune.json", dict(summary))

    return replace_path(out, write, folder=True)


def _summary(pruned: PrunedModel, start: float, **extra: Any) -> dict[str, Any]:
    return {
        "model": pruned.ws.model_id,
        "method": pruned.method.describe() if pruned.method is not None else None,
        "lowrank": pruned.file.lowrank.model_dump() if pruned.file.lowrank is not None else None,
        "reduction": pruned.file.allocation.reduction(pruned.ws.matrices),
        "removed_blocks": sorted(pruned.file.removed_blocks),
        "pattern": pruned.file.pattern,
        "achieved_sparsity": achieved_sparsity(pruned.pruner.matrices),
        "calibration_seconds": pruned.statistics.seconds,
        "calibration_tokens": pruned.statistics.tokens,
        "prune_seconds": pruned.prune_seconds,
        "seconds": time.perf_counter() - start,
        **extra,
    }


def factorise_pruned(pruned: PrunedModel) -> int:
    """Swap every factorised matrix of the pruned model for its factors; returns the parameters
    really removed (factors and removed decoder blocks). The model's removed blocks are already out
    of its block list (the pruner's :class:`~sieve.models.depth.BlockRemoval`), so what is saved has
    fewer blocks and a config that says so; the factors are named by the blocks' new numbering."""
    allocation, matrices = pruned.file.allocation, pruned.ws.matrices
    removed = sum(allocation.removed(m) for m in matrices if m.block in allocation.removed_blocks)
    ranks = pruned.file.module_ranks
    if not ranks:
        return removed
    depth = pruned.pruner.depth
    blocks = sorted(depth.removed) if depth is not None else []
    if blocks:
        depth.show(())  # the allocation names matrices by the original stack
    factors = {name: (f.a, f.b) for name, f in
               ((name, pruned.pruner.factors_of(name).truncated(rank)) for name, rank in ranks.items())}
    factorise(pruned.ws.model, factors)
    if blocks:
        depth.show(blocks)
        record_ranks(pruned.ws.model)
    return removed + sum(allocation.removed(pruned.pruner.by_name[name]) for name in ranks)


@EXPORTERS.register
class HFExporter(Exporter):
    name: Literal["hf"] = "hf"
    writes = "folder"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        start = time.perf_counter()
        pruned = request.pruned()
        summary = _summary(pruned, start, allocation=str(request.target.path))
        summary["parameters_removed"] = factorise_pruned(pruned)
        write_folder(pruned.ws, pruned.file, request.out, summary, force=request.force)
        return {"out": str(request.out), "model": summary["model"], "achieved_sparsity": summary["achieved_sparsity"],
                "parameters_removed": summary["parameters_removed"]}


@EXPORTERS.register
class HFMergedExporter(Exporter):
    """Factors multiplied back: the standard layout for tools that need it, with no size or speed gain."""

    name: Literal["hf-merged"] = "hf-merged"
    writes = "folder"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        start = time.perf_counter()
        pruned = request.pruned()
        summary = _summary(pruned, start, allocation=str(request.target.path))
        write_folder(pruned.ws, pruned.file, request.out, summary, force=request.force)
        return {"out": str(request.out), "model": summary["model"], "achieved_sparsity": summary["achieved_sparsity"]}


def _conflicts(config: PruneConfig, target: AllocationTarget) -> None:
    """Flags given together with ``--allocation`` must agree with what the file records."""
    given, file = config.model_fields_set, target.file
    if "method" in given and file.method is not None and config.method != file.method:
        raise SieveError(f"--method {config.method.name} conflicts with the allocation's method {file.method.describe()}; "
                         "omit --method (the allocation reproduces its own masks)")
    if "primitive" in given and getattr(config.primitive, "pattern", None) != file.pattern:
        raise SieveError(f"--pattern / --lowrank conflict with the allocation (pattern {file.pattern}; its factors "
                         "are recorded in the file)")
    if "sparsity" in given:
        raise SieveError("--sparsity does not apply with --allocation (the allocation records its own)")
    for name in ("task", "general"):
        recorded = getattr(file, name)
        if name in given and recorded is not None and getattr(config, name) != recorded:
            raise SieveError(f"--{name} {getattr(config, name)} conflicts with the allocation's {name} {recorded} "
                             "(its statistics come from that one)")


def prune_model(config: PruneConfig, out: Path, *, force: bool = False) -> dict[str, Any]:
    """``sieve prune``: uniformly by ``config``, or by ``config.allocation`` (a file or a run); writes ``out``."""
    start = time.perf_counter()
    if config.allocation is not None:
        target = open_target(config.allocation)
        _conflicts(config, target)
        if target.file.method is None:
            target = AllocationTarget(target.file.model_copy(update={"method": config.method}), target.path, target.run)
        model = config.model if "model" in config.model_fields_set else None
        check_output(out, paths_read(model, target=target), force=force, writes="folder")
        ws = open_workspace_for(target, model=model, device=config.device)
        pruned = realise_target(target, ws)
    else:
        check_output(out, paths_read(config.model, config.task, config.general), force=force, writes="folder")
        pruned = _prune_uniform(config)
    summary = _summary(pruned, start, config=to_dict(config))
    summary["parameters_removed"] = factorise_pruned(pruned)
    write_folder(pruned.ws, pruned.file, out, summary, force=force)
    return summary


def _prune_uniform(config: PruneConfig) -> PrunedModel:
    method, lowrank = config.method, config.primitive if isinstance(config.primitive, LowRank) else None
    sources = lowrank.sources if lowrank is not None else method.sources
    hessian = lowrank is not None or method.needs_hessian
    ws = Workspace.open(config.model, task=config.task if "task" in sources else None,
                        general=config.general if "general" in sources else None, dtype=config.dtype,
                        device=config.device, split=config.split, base_dir=Path(config.workdir))
    if lowrank is not None:
        allocation = Allocation.uniform_rank(ws.matrices, config.sparsity, lowrank.multiple_for)
    else:
        pattern = config.primitive.parsed
        for m in ws.matrices:
            pattern.check(m.name, m.shape[1])
        allocation = Allocation.uniform(ws.matrices, config.sparsity, pattern)
    statistics = ensure_stats(
        ws.model, ws.tokenizer, ws.matrices, sources, weights_hash=ws.weights_hash, cfg=config.calibration,
        general=ws.corpus, task_texts=ws.task.calibration_texts() if ws.task is not None else None,
        hessian=hessian, store=CacheStore.for_model(ws.model_id),
    )
    file = AllocationFile.build(
        allocation, model=ws.model_id, weights_hash=ws.weights_hash, model_digests=ws.model_identity.digests,
        dtype=ws.dtype,
        method=method.describe() if lowrank is None else None, lowrank=lowrank.model_dump() if lowrank else None,
        calibration=config.calibration.model_dump(), task=config.task if "task" in sources else None,
        general=config.general if "general" in sources else None, split=config.split.model_dump(),
        workdir=config.workdir, stats=statistics.fingerprints, stats_hessian=hessian, budget=config.sparsity,
        config_digest=digest(config), achieved_sparsity=sum(allocation.removed(m) for m in ws.matrices)
        / sum(m.numel for m in ws.matrices),
    )
    return realise(ws, file, store=None, where="the uniform allocation", statistics=statistics)


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
        shape = tuple(by_name[name].stored.shape)
        if tuple(mask.shape) != shape:
            raise SieveError(f"mask of {name} has shape {tuple(mask.shape)}, the model's weight {shape}")
    sparsity = {}
    with torch.no_grad():
        for name, mask in masks.items():
            w = by_name[name].stored
            keep = mask.to(device=w.device, dtype=torch.bool)
            w.copy_(torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device)))
            sparsity[name] = 1.0 - float(keep.sum()) / keep.numel()
    return Allocation(sparsity, UNSTRUCTURED)


def prune_with_masks(model: str, masks_path: Path, out: Path, *, dtype: str, device: str,
                     force: bool = False) -> dict[str, Any]:
    """``prune --masks``: apply exported masks to ``model`` (e.g. a fine-tune of the same base)."""
    from sieve.export.masks import read_masks

    start = time.perf_counter()
    check_output(out, {"the masks": masks_path, **paths_read(model)}, force=force, writes="folder")
    masks, meta = read_masks(masks_path)
    ws = Workspace.open(model, task=None, general=None, dtype=dtype, device=device)
    dense_hash = ws.weights_hash
    allocation = apply_masks(ws.matrices, masks)
    achieved = achieved_sparsity(ws.matrices)
    file = AllocationFile.build(allocation, model=ws.model_id, weights_hash=dense_hash,
                                model_digests=ws.model_identity.digests, dtype=ws.dtype,
                                budget=allocation.weighted_sparsity(ws.matrices), achieved_sparsity=achieved)
    summary = {"model": ws.model_id, "masks": str(masks_path), "masks_model": meta.get("model"),
               "masks_weights_hash": meta.get("weights_hash"), "achieved_sparsity": achieved,
               "pattern": meta.get("pattern", "unstructured"), "seconds": time.perf_counter() - start}
    write_folder(ws, file, out, summary, force=force)
    return summary
