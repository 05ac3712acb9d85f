"""The exporter interface, its registry, and the shared steps every format builds on.

An export starts from an :class:`~sieve.prune.api.AllocationSource` (a ``sieve.allocation/v1``
file or a run directory) and a model. Formats differ in what they need:

* the model's matrices only (``csv``, ``markdown``, ``llmcompressor``): :func:`checked_workspace`
  loads the model and refuses an allocation made for another one;
* the pruned model (``hf``, ``masks``): :func:`pruned_model` applies the allocation with the
  allocation's own scoring method and statistics (a run's ``stats/``, else recomputed and cached
  exactly as ``sieve prune`` does).

The model defaults to the run's ``config.yaml`` model, else to the allocation's ``model`` field.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sieve.config import PruneConfig
from sieve.errors import SieveError
from sieve.models.arch import Matrix
from sieve.prune.allocation import Allocation
from sieve.prune.api import (
    AllocationSource,
    PrunedModel,
    check_allocation,
    open_workspace,
    prune_config_for,
    prune_in_place,
    read_allocation,
)
from sieve.prune.mask import row_prune_count
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportRequest:
    """What to export, where to, and overrides of what the allocation / run records."""

    source: AllocationSource
    out: Path
    model: str | None = None
    task: str | None = None
    general: str | None = None
    dtype: str | None = None
    device: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)

    def prune_config(self) -> PruneConfig:
        """The ``sieve prune`` config that reproduces the allocation on the model."""
        return prune_config_for(
            self.source, model=self.model, task=self.task, general=self.general, dtype=self.dtype, device=self.device
        )


class Exporter(ABC):
    """One output format."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: option names (``ExportRequest.options``) this format understands
    options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def export(self, request: ExportRequest) -> dict[str, Any]:
        """Write ``request.out``; return a summary (at least ``out``)."""


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    _EXPORTERS[cls.name] = cls()
    return cls


def available_formats() -> list[str]:
    return sorted(_EXPORTERS)


def get_exporter(name: str) -> Exporter:
    if name not in _EXPORTERS:
        raise SieveError(f"unknown export format {name!r}; choose from {', '.join(available_formats())}")
    return _EXPORTERS[name]


def export_allocation(
    target: str | Path,
    fmt: str,
    out: Path,
    *,
    model: str | None = None,
    task: str | None = None,
    general: str | None = None,
    dtype: str | None = None,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the allocation at ``target`` (a file or a run directory) as ``fmt`` to ``out``."""
    exporter = get_exporter(fmt)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    for key in given:
        if key not in exporter.options:
            raise SieveError(f"option --{key} does not apply to --to {fmt}")
    source = read_allocation(target)
    request = ExportRequest(source, Path(out), model, task, general, dtype, device, given)
    summary = exporter.export(request)
    log.info("exported %s as %s to %s", source.path, fmt, out)
    return {"format": fmt, "allocation": str(source.path), **summary}


def checked_workspace(request: ExportRequest) -> Workspace:
    """The model alone (no data), with the allocation checked against it."""
    config = request.prune_config()
    ws = Workspace.open(config.model, task=None, general=None, dtype=config.dtype, device=config.device)
    check_allocation(request.source, ws.matrices, ws.loaded.model_id)
    return ws


def pruned_model(request: ExportRequest) -> PrunedModel:
    """The model pruned in memory by the allocation, with its own method and statistics."""
    config = request.prune_config()
    ws = open_workspace(config, request.source)
    return prune_in_place(ws, config, source=request.source)


def named_order(ws: Workspace) -> list[Matrix]:
    """Prunable matrices in ``model.named_modules()`` order (the order llm-compressor matches)."""
    index = {name: i for i, (name, _) in enumerate(ws.model.named_modules())}
    return sorted(ws.matrices, key=lambda m: index[m.name])


def pruned_weights(m: Matrix, allocation: Allocation) -> int:
    """Weights the pruner removes from ``m``: ``rows · int(cols · s)``, or ``rows · cols/M · N`` for N:M."""
    sparsity = allocation.sparsity.get(m.name, 0.0)
    rows, cols = m.shape
    pattern = allocation.pattern_of(m.name)
    if sparsity <= 0:
        return 0
    if pattern.structured:
        return rows * (cols // pattern.m) * round(sparsity * pattern.m)
    return rows * row_prune_count(cols, sparsity)


TABLE_COLUMNS = ("module", "block", "kind", "rows", "cols", "sparsity", "pruned_weights")


def module_rows(matrices: Sequence[Matrix], allocation: Allocation) -> list[dict[str, Any]]:
    """One row per prunable matrix (allocated sparsity; 0 for matrices the allocation leaves dense)."""
    rows = []
    for m in matrices:
        r, c = m.shape
        rows.append({
            "module": m.name, "block": m.block, "kind": m.kind, "rows": r, "cols": c,
            "sparsity": float(allocation.sparsity.get(m.name, 0.0)), "pruned_weights": pruned_weights(m, allocation),
        })
    return rows
