"""What ``eval`` / ``export`` / ``prune --allocation`` were pointed at: an allocation file or a run.

A run directory stands for its ``best_allocation.json`` and brings its ``stats/``; a file brings
the shared statistics cache. :func:`realise_target` loads exactly what reproducing the masks needs
— the model (checked by weights hash), and the task or general corpus only when statistics must be
recomputed — and prunes it in memory (:func:`sieve.prune.realise.realise`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sieve.data.splits import SplitSpec
from sieve.errors import SieveError
from sieve.models.sources import BUILTIN_MODELS
from sieve.prune.allocation import AllocationFile
from sieve.prune.realise import PrunedModel, realise, sources_to_compute
from sieve.search.rundir import RunDir
from sieve.stats.calibrate import CacheStore, StatsStore
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllocationTarget:
    file: AllocationFile
    path: Path  # the JSON file
    run: RunDir | None  # set when the user named a run directory

    @property
    def label(self) -> str:
        return "sieve-search" if self.run is not None else self.path.stem

    def store(self, model_id: str | None = None) -> StatsStore:
        if self.run is not None:
            return self.run.stats
        return CacheStore.for_model(model_id or self.file.model or "unknown")


def is_allocation_target(target: str | Path) -> bool:
    path = Path(target)
    return RunDir.is_run(path) or (path.suffix == ".json" and path.is_file())


def open_target(target: str | Path) -> AllocationTarget:
    """A ``sieve.allocation/v1`` file, or a run directory's best allocation."""
    path = Path(target)
    if path.is_dir():
        run = RunDir.existing(path)
        return AllocationTarget(run.best_allocation(), run.best_allocation_path, run)
    return AllocationTarget(AllocationFile.read(path), path, None)


def local_path(spec: str | Path | None) -> Path | None:
    """The file or folder ``spec`` names on this machine; ``None`` for a built-in or hub name."""
    if not spec or str(spec) in BUILTIN_MODELS:
        return None
    path = Path(spec).expanduser()
    return path if path.exists() else None


def paths_read(model: str | None = None, task: str | None = None, general: str | None = None,
               target: AllocationTarget | None = None) -> dict[str, Path | None]:
    """The local paths a command reads, named for :func:`sieve.io.check_output`: the run (or the
    allocation file), the model, the task YAML and the general corpus file (a target's own unless given)."""
    paths: dict[str, Path | None] = {}
    if target is not None:
        paths = {"the run": target.run.path} if target.run is not None else {"the allocation": target.path}
        model, task, general = model or target.file.model, task or target.file.task, general or target.file.general
    return {**paths, "the model": local_path(model), "the task": local_path(task),
            "the general corpus": local_path(general)}


def open_workspace_for(target: AllocationTarget, *, model: str | None = None, device: str = "auto") -> Workspace:
    """The model the allocation was made for (or ``model``, checked by weights hash), with the task /
    corpus loaded only when statistics must be recomputed (then with the file's own split)."""
    file = target.file
    spec = model or file.model
    if not spec:
        raise SieveError(f"allocation {target.path} records no model; give one with --model")
    needs = sources_to_compute(file, target.store(file.model))
    return Workspace.open(
        spec,
        task=file.task if "task" in needs else None,
        general=file.general if "general" in needs else None,
        dtype=file.dtype or "float32",
        device=device,
        split=file.split or SplitSpec(),
        base_dir=Path(file.workdir) if file.workdir else None,
    )


def realise_target(target: AllocationTarget, ws: Workspace, task_texts: list[str] | None = None) -> PrunedModel:
    return realise(ws, target.file, store=target.store(ws.model_id), where=target.path, task_texts=task_texts)
