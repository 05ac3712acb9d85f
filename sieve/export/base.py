"""The exporter interface, its registry, and the steps every format shares.

An export starts from an :class:`~sieve.evaluate.target.AllocationTarget` (a ``sieve.allocation/v1``
file or a run directory) and writes one output. Formats differ in what they need:

* the model's matrices only (``csv``, ``markdown``, ``llmcompressor``): :meth:`ExportRequest.checked_workspace`
  loads the model and refuses an allocation made for another one;
* the pruned model (``hf``, ``masks``): :meth:`ExportRequest.pruned` realises the allocation with
  its own scoring method and statistics (:func:`sieve.prune.realise.realise`).

Each exporter is a pydantic model owning its options (``llmcompressor``'s ``modifier``). Outputs are
never written over an existing path without ``--force``, never over, around or into what the export
reads (the run or allocation file, the model: :func:`sieve.io.check_output`), and always through a
unique temporary path renamed into place.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sieve.config import Frozen
from sieve.errors import SieveError
from sieve.evaluate.target import AllocationTarget, open_target, open_workspace_for, paths_read, realise_target
from sieve.io import check_output
from sieve.models.matrix import Matrix
from sieve.prune.allocation import Allocation
from sieve.prune.realise import PrunedModel
from sieve.registry import Registry
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportRequest:
    """What to export, where to, and where the model is when it moved since (checked by weights hash)."""

    target: AllocationTarget
    out: Path
    model: str | None = None
    device: str = "auto"
    force: bool = False

    def checked_workspace(self) -> Workspace:
        """The model alone (no data), with the allocation checked against it."""
        ws = Workspace.open(self.model or self.target.file.model or "", task=None, general=None,
                            dtype=self.target.file.dtype or "float32", device=self.device)
        self.target.file.check_model(ws.matrices, ws.model_id, ws.weights_hash, str(self.target.path),
                                     ws.model_identity)
        return ws

    def pruned(self) -> PrunedModel:
        """The model pruned in memory by the allocation, with its own method and statistics."""
        ws = open_workspace_for(self.target, model=self.model, device=self.device)
        return realise_target(self.target, ws)


class Exporter(Frozen, ABC):
    """One output format; its fields are the format's options."""

    name: str
    writes: ClassVar[str] = "file"  # or "folder"

    @abstractmethod
    def export(self, request: ExportRequest) -> dict[str, Any]:
        """Write ``request.out``; return a summary (at least ``out``)."""


EXPORTERS: Registry[Exporter] = Registry("export format", "sieve.export")


def export_allocation(target: str | Path, fmt: str | dict[str, Any], out: Path, *, model: str | None = None,
                      device: str = "auto", force: bool = False) -> dict[str, Any]:
    """Export the allocation at ``target`` (a file or a run directory) as ``fmt`` (a name, or
    ``{"name": ..., **options}``) to ``out``."""
    exporter = _build(fmt)
    opened = open_target(target)
    check_output(out, paths_read(model, target=opened), force=force, writes=exporter.writes)
    summary = exporter.export(ExportRequest(opened, Path(out), model, device, force))
    log.info("exported %s as %s to %s", opened.path, exporter.name, out)
    return {"format": exporter.name, "allocation": str(opened.path), **summary}


def _build(fmt: str | dict[str, Any]) -> Exporter:
    from pydantic import ValidationError

    from sieve.config import one_line

    spec = {"name": fmt} if isinstance(fmt, str) else dict(fmt)
    fields = EXPORTERS.get(spec["name"]).model_fields
    for option in spec:
        if option not in fields:
            raise SieveError(f"option --{option} does not apply to --to {spec['name']}")
    try:
        return EXPORTERS.build(spec)
    except ValidationError as exc:
        raise SieveError(one_line(exc)) from None
    except ValueError as exc:
        raise SieveError(str(exc)) from None


def named_order(ws: Workspace) -> list[Matrix]:
    """Prunable matrices in ``model.named_modules()`` order (the order llm-compressor matches)."""
    index = {name: i for i, (name, _) in enumerate(ws.model.named_modules())}
    return sorted(ws.matrices, key=lambda m: index[m.name])


TABLE_COLUMNS = ("module", "block", "kind", "rows", "cols", "sparsity", "rank", "pruned_weights")


def module_rows(matrices: Sequence[Matrix], allocation: Allocation) -> list[dict[str, Any]]:
    """One row per prunable matrix: allocated sparsity (0 when dense or factorised), rank (empty
    unless factorised) and the parameters it gives up (zeros, or the factors' saving)."""
    rows = []
    for m in matrices:
        r, c = m.shape
        rows.append({
            "module": m.name, "block": m.block, "kind": m.kind, "rows": r, "cols": c,
            "sparsity": float(allocation.sparsity.get(m.name, 0.0)), "rank": allocation.ranks.get(m.name, ""),
            "pruned_weights": allocation.removed(m),
        })
    return rows
