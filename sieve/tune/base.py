"""What ``sieve tune`` tunes: the pruned model exactly as the run exports it, or an exported folder.

* A **search run** is realised the way ``sieve export --to hf`` realises it
  (:meth:`~sieve.export.base.ExportRequest.pruned` + :func:`~sieve.export.hf.factorise_pruned`):
  its best allocation on its dense model, with its own method and statistics (checked by weights
  hash), factorised matrices swapped for their factors, removed blocks out of the block list.
* An **exported folder** (``sieve export --to hf`` / ``sieve prune``; a factorised one loads with
  :func:`sieve.load_pretrained`) is loaded as it is; its ``allocation.json`` names the dense model
  it came from (the distillation teacher, ``sieve eval --baseline dense``).

Either way the masks are the model's own zeros (``M = W ≠ 0``) and the identity recorded for a
resume is the hash of the prepared model's prunable weights, beside the source's own digests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sieve.data.splits import SplitSpec
from sieve.errors import SieveError
from sieve.evaluate.target import open_target
from sieve.export.base import ExportRequest
from sieve.export.hf import factorise_pruned
from sieve.io import file_digest
from sieve.models.adapters import adapter_for, find_matrices
from sieve.models.factorized import FactorizedLinear
from sieve.models.matrix import weights_hash
from sieve.prune.allocation import AllocationFile
from sieve.search.rundir import RunDir
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """What the source is, read from its small files only (cheap: before anything slow)."""

    kind: str  # "run" or "folder"
    path: Path
    task: str | None
    general: str | None
    workdir: str | None
    dense: str | None  # the dense model it was pruned from
    digests: dict[str, str] = field(default_factory=dict)
    #: how the search that chose the base split the task's documents (its validation and selection
    #: documents chose the base, so the tuning validates on others); ``None`` without a search
    split: SplitSpec | None = None

    def inputs(self) -> dict[str, Path | None]:
        """The paths it reads, named for :func:`sieve.io.check_output`."""
        from sieve.evaluate.target import local_path

        return {"the run" if self.kind == "run" else "the model folder": self.path,
                "the dense model": local_path(self.dense)}


def describe_source(source: str | Path) -> SourceInfo:
    """A search run (``config.yaml``) or a model folder (``config.json``); else one error line."""
    path = Path(source).expanduser().absolute()
    if RunDir.is_run(path):
        run = RunDir.existing(path)
        config = run.config()
        file = run.best_allocation()
        return SourceInfo("run", path, config.task, config.general, config.workdir, file.model or config.model,
                          {"best_allocation.json": file_digest(run.best_allocation_path)}, config.split())
    if path.is_dir() and (path / "config.json").is_file():
        file = _folder_allocation(path)
        weights = {p.name: file_digest(p) for p in sorted(path.glob("*.safetensors"))}
        searched = file is not None and file.space is not None
        return SourceInfo("folder", path, file.task if file else None, file.general if file else None,
                          file.workdir if file else None, file.model if file else None, weights,
                          file.split if searched else None)
    if not path.exists():
        raise SieveError(f"{source} does not exist: give a search run directory or an exported model folder")
    raise SieveError(f"{source} is neither a sieve search run (no config.yaml) nor a model folder (no config.json)")


def _folder_allocation(path: Path) -> AllocationFile | None:
    file = path / "allocation.json"
    return AllocationFile.read(file) if file.is_file() else None


@dataclass
class Base:
    """The prepared model, its tokenizer, the allocation it was pruned by (when known) and its identity."""

    model: nn.Module
    tokenizer: Any
    model_id: str
    allocation: AllocationFile | None
    info: SourceInfo

    @property
    def blocks(self) -> int:
        return len(adapter_for(self.model).blocks(self.model)[1])

    def identity(self) -> dict[str, Any]:
        """``kind``, ``path``, the source's digests, the prepared weights' hash and what is in it."""
        matrices = find_matrices(self.model)
        zeros = sum(int((m.weight == 0).sum()) for m in matrices)
        return {
            "kind": self.info.kind, "path": str(self.info.path), "model": self.model_id, "dense": self.info.dense,
            "source_digests": dict(self.info.digests), "weights_hash": weights_hash(matrices),
            "blocks": self.blocks, "zeros": zeros, "parameters": sum(p.numel() for p in self.model.parameters()),
            "factorised": sorted(n for n, m in self.model.named_modules() if isinstance(m, FactorizedLinear)),
        }


def open_base(info: SourceInfo, *, device: str, dtype: str) -> Base:
    """Load and prepare the source (module docstring); the model ends in ``dtype`` on ``device``."""
    if info.kind == "run":
        target = open_target(info.path)
        pruned = ExportRequest(target, info.path, device=device).pruned()
        factorise_pruned(pruned)
        ws, file = pruned.ws, target.file
    else:
        ws = Workspace.open(str(info.path), task=None, general=None, dtype=dtype, device=device)
        file = _folder_allocation(info.path)
    model = ws.model.to(getattr(torch, dtype)).eval()
    model_id = ws.model_id
    if info.kind == "folder" and (info.path / "sieve_model_id").is_file():
        model_id = (info.path / "sieve_model_id").read_text().strip() or model_id
    return Base(model, ws.tokenizer, model_id, file, info)


def open_dense(info: SourceInfo, *, device: str, dtype: str) -> nn.Module:
    """The dense model the source was pruned from (the distillation teacher)."""
    if not info.dense:
        raise SieveError(f"distillation needs the dense model, but {info.path} records none (no allocation.json)")
    ws = Workspace.open(info.dense, task=None, general=None, dtype=dtype, device=device)
    model = ws.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

