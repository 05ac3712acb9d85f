"""Realise an allocation file on a live model: the one path from ``sieve.allocation/v1`` to masks.

Every command that applies an allocation (``prune``, ``eval``, ``export``) goes through
:func:`realise`, so the same file gives the same masks everywhere:

1. the file is checked against the model (module names, dense weights hash);
2. the statistics are the ones the file records by fingerprint — read from a store (a run's
   ``stats/`` or the shared cache), or recomputed from the recorded calibration settings and data
   and then required to have the recorded fingerprint (a changed task file is an error, not
   silently different masks);
3. the allocation is applied in place by :class:`~sieve.prune.pruner.ModelPruner`;
   ``pruner.restore()`` brings the dense weights back bit for bit.

This module knows nothing about search runs or exports: it takes a workspace, a file and a store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sieve.errors import SieveError
from sieve.models.depth import BlockRemoval
from sieve.models.matrix import Matrix
from sieve.prune.allocation import AllocationFile
from sieve.prune.pruner import ModelPruner
from sieve.scores.base import ScoringMethod
from sieve.stats import MatrixStats
from sieve.stats.calibrate import Statistics, StatsStore, ensure_stats, read_stored
from sieve.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class PrunedModel:
    """A workspace whose model is pruned in memory by ``file``."""

    ws: Workspace
    file: AllocationFile
    method: ScoringMethod | None
    pruner: ModelPruner
    statistics: Statistics
    prune_seconds: float


def file_matrices(file: AllocationFile, matrices: Sequence[Matrix]) -> list[Matrix]:
    """The matrices an allocation file covers (its statistics were computed for exactly these)."""
    names = file.names
    return [m for m in matrices if m.name in names]


def sources_to_compute(file: AllocationFile, store: StatsStore | None) -> set[str]:
    """Calibration sources whose recorded statistics the store lacks (data must be loaded for them)."""
    return {s for s in file.sources if s not in file.stats or store is None
            or not store.path(s, file.stats[s]).exists()}


def statistics_for(ws: Workspace, file: AllocationFile, store: StatsStore | None,
                   task_texts: Sequence[str] | None = None) -> Statistics:
    """The statistics the file's masks were computed from (see module docstring, step 2);
    ``task_texts``: the calibration texts when ``ws.task`` was split differently (evaluation)."""
    matrices = file_matrices(file, ws.matrices)
    missing = sources_to_compute(file, store)
    recorded = {s: file.stats[s] for s in file.sources if s not in missing}
    result = read_stored(store, recorded, matrices, file.needs_hessian) if recorded else None
    result = result or Statistics({m.name: MatrixStats() for m in matrices})
    if not missing:
        return result
    if file.calibration is None:
        raise SieveError("the allocation records no calibration settings; its statistics cannot be recomputed")
    if task_texts is None and ws.task is not None:
        task_texts = ws.task.calibration_texts()
    if "task" in missing and task_texts is None:
        raise SieveError("the allocation needs task statistics but no task was loaded")
    computed = ensure_stats(
        ws.model, ws.tokenizer, matrices, sorted(missing), weights_hash=ws.weights_hash, cfg=file.calibration,
        general=ws.corpus, task_texts=task_texts, hessian=file.needs_hessian, store=store,
    )
    for source in sorted(missing):
        expected = file.stats.get(source)
        if expected and computed.fingerprints[source] != expected:
            raise SieveError(
                f"recomputed {source} statistics have fingerprint {computed.fingerprints[source]}, but the allocation "
                f"was made with {expected}: the calibration data or settings changed since"
            )
        for name, per in computed.per_matrix.items():
            result.per_matrix[name] = replace(result.per_matrix[name], **{source: getattr(per, source)})
    result.fingerprints.update(computed.fingerprints)
    result.seconds.update(computed.seconds)
    result.tokens.update(computed.tokens)
    result.by_source.update(computed.by_source)
    return result


def realise(ws: Workspace, file: AllocationFile, *, store: StatsStore | None, where: str | Path,
            statistics: Statistics | None = None, task_texts: Sequence[str] | None = None) -> PrunedModel:
    """Prune ``ws.model`` in place by ``file`` (checked against the model) with its own method,
    low-rank primitive and statistics."""
    method = file.scoring_method() if any(s > 0 for s in file.modules.values()) else file.method
    file.check_model(ws.matrices, ws.model_id, ws.weights_hash, str(where), ws.model_identity)
    if statistics is None:
        statistics = statistics_for(ws, file, store, task_texts)
    pruner = ModelPruner(file_matrices(file, ws.matrices), method, statistics.per_matrix, file.lowrank,
                         depth=BlockRemoval(ws.model) if file.removed_blocks else None)
    start = time.perf_counter()
    pruner.apply(file.allocation)
    return PrunedModel(ws, file, method, pruner, statistics, time.perf_counter() - start)
