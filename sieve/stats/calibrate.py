"""Calibration: turn the general corpus and the task into statistics, computed once and reused.

This is the glue between ``data`` and the collectors: it tokenises each source into batches, runs
one hooked forward pass per source, and stores the result as safetensors under its
**fingerprint**::

    fingerprint = sha256(weights hash | source | matrix names | exact token batches | Hessian? | sequential?)

so statistics are reused exactly when the same model saw the same tokens the same way, whatever
the spec strings were. Where they are stored is a :class:`StatsStore`: a run directory keeps one
file per source and refuses to replace it with different statistics (``strict``); the shared cache
keeps one file per fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from pydantic import PositiveInt
from torch import nn

from sieve.config import Frozen
from sieve.data.batching import pad_right
from sieve.data.general import GeneralCorpus, token_blocks
from sieve.errors import SieveError
from sieve.io import link_atomic
from sieve.models.adapters import adapter_for
from sieve.models.matrix import Matrix
from sieve.resources import cache_dir
from sieve.stats.channel import CalibrationStats, MatrixStats
from sieve.stats.collect import collect_stats, collect_stats_sequential

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


class CalibrationConfig(Frozen):
    """How much text the statistics see, and whether they are collected block by block
    (``sequential``: one decoder block at a time over all batches, for large models)."""

    general_blocks: PositiveInt = 128
    block_len: PositiveInt = 256
    task_examples: PositiveInt = 128
    batch_size: PositiveInt = 8
    sequential: bool = False


def general_batches(corpus: GeneralCorpus, tokenizer, cfg: CalibrationConfig) -> list[Batch]:
    blocks = token_blocks(corpus.calibration, tokenizer, cfg.general_blocks, cfg.block_len)
    return [(blocks[i : i + cfg.batch_size], None) for i in range(0, len(blocks), cfg.batch_size)]


def text_batches(texts: Sequence[str], tokenizer, cfg: CalibrationConfig) -> list[Batch]:
    """Right-padded batches of ``texts`` (truncated from the left to ``2 · block_len`` tokens)."""
    max_len = 2 * cfg.block_len
    batches = []
    for i in range(0, len(texts), cfg.batch_size):
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_len:] for t in texts[i : i + cfg.batch_size]]
        batches.append(pad_right(encoded, tokenizer.pad_token_id or 0))
    return batches


def fingerprint(weights_hash: str, source: str, batches: Sequence[Batch], matrices: Sequence[Matrix],
                cfg: CalibrationConfig, hessian: bool) -> str:
    h = hashlib.sha256(f"{weights_hash}|{source}|hessian={hessian}|sequential={cfg.sequential}|".encode())
    h.update(",".join(m.name for m in matrices).encode())
    for ids, mask in batches:
        h.update(ids.numpy().tobytes())
        if mask is not None:
            h.update(mask.numpy().tobytes())
    return h.hexdigest()[:16]


class StatsStore(Protocol):
    """Where statistics live. ``strict``: a stored file with another fingerprint is an error."""

    strict: bool

    def path(self, source: str, fingerprint: str) -> Path: ...


@dataclass(frozen=True)
class CacheStore:
    """The shared cache: one file per (model, source, fingerprint); nothing is ever replaced."""

    root: Path
    strict: bool = False

    def path(self, source: str, fingerprint: str) -> Path:
        return self.root / f"{source}-{fingerprint}.safetensors"

    @classmethod
    def for_model(cls, model_id: str) -> CacheStore:
        """``$SIEVE_CACHE/stats/<model id>/``."""
        return cls(cache_dir() / "stats" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id))


@dataclass
class Statistics:
    """Per-matrix statistics plus where they came from (fingerprints) and what they cost."""

    per_matrix: dict[str, MatrixStats]
    fingerprints: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, CalibrationStats] = field(default_factory=dict)
    #: where each source's statistics are already stored (read from or written to a store)
    files: dict[str, Path] = field(default_factory=dict)

    def save_to(self, store: StatsStore) -> None:
        """Put every source's statistics into ``store`` (e.g. a Pareto probe's run directory): a hard
        link to the file they are already stored in where the file system allows (a 1.5B model's
        Hessians are ~10 GB per source; twenty runs need not hold twenty copies), else a copy."""
        for source, stats in self.by_source.items():
            path = store.path(source, stats.fingerprint)
            if path.exists():
                continue
            stored = self.files.get(source)
            if stored is not None and stored.exists() and link_atomic(stored, path):
                continue
            stats.save(path)
            self.files.setdefault(source, path)

    def only(self, sources: Sequence[str], matrices: Sequence[Matrix]) -> Statistics:
        """These statistics restricted to ``sources`` (a run records and stores only what its space
        reads). ``files`` is shared, not copied: where one restriction stores a file, the next links it."""
        kept = {s: self.by_source[s] for s in sources if s in self.by_source}
        return Statistics(_per_matrix(kept, matrices), {s: self.fingerprints[s] for s in kept},
                          {s: self.seconds.get(s, 0.0) for s in kept}, {s: self.tokens.get(s, 0) for s in kept},
                          kept, self.files)

    def __getitem__(self, name: str) -> MatrixStats:
        return self.per_matrix[name]

    def get(self, name: str, default: MatrixStats | None = None) -> MatrixStats | None:
        return self.per_matrix.get(name, default)


def read_stored(store: StatsStore, fingerprints: Mapping[str, str], matrices: Sequence[Matrix],
                hessian: bool) -> Statistics | None:
    """Statistics with exactly these fingerprints from ``store`` (``None`` when any is missing)."""
    loaded: dict[str, CalibrationStats] = {}
    for source, fp in fingerprints.items():
        path = store.path(source, fp)
        if not path.exists():
            return None
        stats = CalibrationStats.load(path)
        if stats.fingerprint != fp:
            raise SieveError(f"statistics {path} have fingerprint {stats.fingerprint or 'none'}, but "
                             f"{fp} is needed (they belong to another model, data or setting)")
        if hessian and not stats.has_hessian:
            raise SieveError(f"statistics {path} hold no Hessians, which the method needs")
        missing = [m.name for m in matrices if m.name not in stats.per_matrix]
        if missing:
            raise SieveError(f"statistics {path} lack matrix {missing[0]!r}")
        loaded[source] = stats
    return Statistics(_per_matrix(loaded, matrices), dict(fingerprints), {s: 0.0 for s in loaded},
                      {s: _tokens(loaded[s]) for s in loaded}, loaded, {s: store.path(s, fp) for s, fp in fingerprints.items()})


def ensure_stats(
    model: nn.Module,
    tokenizer,
    matrices: Sequence[Matrix],
    sources: Sequence[str],
    *,
    weights_hash: str,
    cfg: CalibrationConfig,
    general: GeneralCorpus | None = None,
    task_texts: Sequence[str] | None = None,
    hessian: bool = False,
    store: StatsStore | None = None,
) -> Statistics:
    """Statistics for each requested source: read from ``store`` when the fingerprint matches,
    else collected (one forward pass, or block by block with ``cfg.sequential``) and stored."""
    collected: dict[str, CalibrationStats] = {}
    result = Statistics({})
    for source in sources:
        if source == "general":
            if general is None:
                raise SieveError("general calibration statistics need a general corpus")
            batches = general_batches(general, tokenizer, cfg)
        else:
            if task_texts is None:
                raise SieveError("task calibration statistics need a task")
            batches = text_batches(list(task_texts)[: cfg.task_examples], tokenizer, cfg)
        fp = fingerprint(weights_hash, source, batches, matrices, cfg, hessian)
        result.fingerprints[source] = fp
        path = store.path(source, fp) if store is not None else None
        if path is not None and path.exists():
            cached = CalibrationStats.load(path)
            if cached.fingerprint == fp and (cached.has_hessian or not hessian):
                log.info("reusing %s statistics from %s", source, path)
                collected[source] = cached
                result.files[source] = path
                result.seconds[source], result.tokens[source] = 0.0, _tokens(cached)
                continue
            if store.strict:
                raise SieveError(f"{path} holds statistics with fingerprint {cached.fingerprint or 'none'}, but this "
                                 f"run needs {fp}: the model, the calibration data or the settings changed")
        start = time.perf_counter()
        if cfg.sequential:
            _, blocks = adapter_for(model).blocks(model)
            stats = collect_stats_sequential(model, blocks, matrices, batches, source=source, hessian=hessian, fingerprint=fp)
        else:
            stats = collect_stats(model, matrices, batches, source=source, hessian=hessian, fingerprint=fp)
        result.seconds[source] = time.perf_counter() - start
        result.tokens[source] = _tokens(stats)
        if path is not None:
            stats.save(path)
            result.files[source] = path
        collected[source] = stats
    result.per_matrix = _per_matrix(collected, matrices)
    result.by_source = collected
    return result


def _tokens(stats: CalibrationStats) -> int:
    return next(iter(stats.per_matrix.values())).n_tokens


def _per_matrix(collected: Mapping[str, CalibrationStats], matrices: Sequence[Matrix]) -> dict[str, MatrixStats]:
    return {
        m.name: MatrixStats(
            general=collected["general"][m.name] if "general" in collected else None,
            task=collected["task"][m.name] if "task" in collected else None,
        )
        for m in matrices
    }
