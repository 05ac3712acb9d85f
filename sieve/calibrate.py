"""Calibration: turn the general corpus and the task into :class:`~sieve.stats.CalibrationStats`.

This is the glue between ``data`` and ``stats``: it tokenises each source into batches, runs one
hooked forward pass per source, and caches the result as safetensors keyed by a fingerprint of
(model, source, amount of text), so a resumed or repeated run never recomputes statistics.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sieve.config import CalibrationConfig
from sieve.data.batching import pad_right
from sieve.data.general import GeneralCorpus, token_blocks
from sieve.models.arch import Matrix, adapter_for
from sieve.stats import CalibrationStats, MatrixStats, collect_stats, collect_stats_sequential

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


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


@dataclass
class StatsTimings:
    seconds: dict[str, float]
    tokens: dict[str, int]


def fingerprint(model_id: str, source: str, spec: str, cfg: CalibrationConfig, hessian: bool) -> str:
    text = f"{model_id}|{source}|{spec}|{cfg}|{hessian}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_stats(
    model: nn.Module,
    tokenizer,
    matrices: Sequence[Matrix],
    sources: Sequence[str],
    *,
    model_id: str,
    cfg: CalibrationConfig,
    general: GeneralCorpus | None = None,
    task_texts: Sequence[str] | None = None,
    task_name: str = "",
    hessian: bool = False,
    stats_dir: Path | None = None,
) -> tuple[dict[str, MatrixStats], StatsTimings]:
    """Statistics for each requested source, loaded from ``stats_dir`` when the fingerprint matches."""
    collected: dict[str, CalibrationStats] = {}
    timings = StatsTimings({}, {})
    for source in sources:
        spec = general.name if source == "general" and general else task_name
        fp = fingerprint(model_id, source, spec, cfg, hessian)
        path = stats_dir / f"{source}.safetensors" if stats_dir else None
        if path is not None and path.exists():
            cached = CalibrationStats.load(path)
            if cached.fingerprint == fp:
                log.info("reusing %s statistics from %s", source, path)
                collected[source] = cached
                timings.seconds[source] = 0.0
                timings.tokens[source] = next(iter(cached.per_matrix.values())).n_tokens
                continue
        if source == "general":
            assert general is not None
            batches = general_batches(general, tokenizer, cfg)
        else:
            assert task_texts is not None
            batches = text_batches(list(task_texts)[: cfg.task_examples], tokenizer, cfg)
        start = time.perf_counter()
        if cfg.sequential:
            _, blocks = adapter_for(model).blocks(model)
            stats = collect_stats_sequential(model, blocks, matrices, batches, source=source, hessian=hessian, fingerprint=fp)
        else:
            stats = collect_stats(model, matrices, batches, source=source, hessian=hessian, fingerprint=fp)
        timings.seconds[source] = time.perf_counter() - start
        timings.tokens[source] = next(iter(stats.per_matrix.values())).n_tokens
        if path is not None:
            stats.save(path)
        collected[source] = stats
    per_matrix = {
        m.name: MatrixStats(
            general=collected["general"][m.name] if "general" in collected else None,
            task=collected["task"][m.name] if "task" in collected else None,
        )
        for m in matrices
    }
    return per_matrix, timings
