"""A scoring plan: every forward that scores fixed examples on one model, built once, then run on
any weights.

* **Jobs**: one sequence per request (HFLM's input, :mod:`sieve.scoring.encode`), except on the
  **fast path**: when every continuation of an example is one token (rotten tomatoes'
  ``" negative"`` / ``" positive"``) the inputs of all choices are the same sequence
  (``ctx[-max_length:]``), so one sequence per example is run and every choice is read from the
  last position's logits -- half the forward tokens for two choices.
* **Shared prefix**: a few-shot prompt is the same for every example; when the model takes a
  KV cache, the common token prefix runs once per scoring run and its cache is copied to every
  batch, which runs only the per-example suffixes (about 2.5× fewer forward tokens on the built-in
  task); on a model with a sliding attention window (Gemma 3), a batch whose rows differ in length
  and exceed the window runs without it, because the padding between prefix and suffix would shift
  that window (:mod:`sieve.models.forward`).
* **Batches**: the jobs are sorted by length and laid out as length buckets or packed rows, whichever
  the cost model finds cheaper (:mod:`sieve.scoring.buckets`), and run under ``torch.inference_mode``.
  When the model accepts ``position_ids``, a bucket's sequences are padded on the left with explicit
  positions, so every scored position sits in the last ``k`` columns and ``logits_to_keep=k`` skips
  the vocabulary projection of the rest; otherwise they are padded on the right. Either way the
  padding is masked and does not change the scores (tests check both against one unpadded forward
  per request).
* **Packed rows**: where the model runs them (:mod:`sieve.models.forward`'s probe), several
  sequences go one after another into one unpadded row under a 4-D attention mask, with positions
  restarting per sequence and the logits computed at the read positions only; the shared prefix is
  then read from its cache or opens the row, whichever is cheaper. Scores are those of one unpadded
  forward per request, up to rounding (tested).
* **Plans**: everything above is decided once per set of examples (:class:`ScoringPlan`); running
  a plan is forwards and tensor ops only, with one device→host transfer at the end, so a search
  scoring the same examples for every candidate can replay it as a CUDA graph
  (:mod:`sieve.metrics.scorer`).
* **Copies**: a plan built with ``copies=K`` runs every input ``K`` times in one forward, candidate-
  major (rows ``c·n … (c+1)·n − 1`` are copy ``c``), and returns ``K`` sets of scores. Through a
  model whose pruned linears hold ``K`` weight sets (:mod:`sieve.models.batched`) that scores ``K``
  candidates with the kernels of one forward. A padded row then costs ``K`` times, a forward's
  launch once: buckets are cut with a forward cost of ``F / K`` per copy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.models.forward import evaluating, forward_features, output_cache, packed_mask, packed_positions
from sieve.scoring.buckets import (
    ForwardCost,
    PackingChoice,
    bucket_bounds,
    forward_cost_tokens,
    packed_layout,
)
from sieve.scoring.encode import EncodedTask, request_input
from sieve.scoring.results import ChoiceScores

log = logging.getLogger(__name__)

Padding = Literal["auto", "left", "right"]

#: sequences per forward wherever examples are scored (search fitness, evaluation, lm-eval): the one default
BATCH_SIZE = 16


@dataclass(frozen=True)
class _Job:
    """One sequence to run; ``targets`` are ``(slot, choice, cont ids)`` read from its end."""

    tokens: tuple[int, ...]
    targets: tuple[tuple[int, int, tuple[int, ...]], ...]


def build_jobs(encoded: EncodedTask, indices: Sequence[int]) -> list[_Job]:
    """Sequences to run for ``indices``: one per example on the fast path, else one per choice.

    The continuation of a target is predicted by the last ``len(cont)`` positions of its job.
    """
    jobs = []
    for slot, i in enumerate(indices):
        ctx, conts = encoded.contexts[i], encoded.continuations[i]
        if encoded.single_token(i):
            jobs.append(_Job(tuple(ctx[-encoded.max_length:]),
                             tuple((slot, j, c) for j, c in enumerate(conts))))
        else:
            jobs.extend(_Job(request_input(ctx, c, encoded.max_length), ((slot, j, c),))
                        for j, c in enumerate(conts))
    return jobs


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class _Batch:
    """One forward's inputs and where its targets' log-probabilities are read (all built once)."""

    kwargs: dict[str, Any]  # input_ids, attention_mask, position_ids, logits_to_keep, use_cache
    shared: bool  # runs after the plan's shared prefix (its cache, repeated over the rows)
    rows: int  # per copy: the shared prefix's cache is repeated this often per copy
    read_rows: torch.Tensor  # positions read from the logits: (row, column) once each
    read_cols: torch.Tensor
    owners: torch.Tensor  # per target token: its position among the read ones
    tokens: torch.Tensor  # per target token: its id
    real_tokens: int


@dataclass
class ScoringPlan:
    """Everything needed to score fixed examples on any weights of one model, built once.

    Built from pure Python data (:meth:`build`), then :meth:`run` is nothing but forwards and tensor
    ops with no host synchronisation — a fixed sequence of kernels on fixed input tensors, which is
    what lets :class:`~sieve.metrics.scorer.TaskScorer` capture it as one CUDA graph and replay it for
    every candidate — and :meth:`collect` reads the result back with one transfer.

    Every bucketed forward carries at least one masked pad column (the shared prefix a leading one).
    Eager transformers drops an all-ones mask and lets SDPA take its ``is_causal`` kernel, but not
    while a graph is captured; with a pad in every forward both build the same explicit mask and run
    the same kernels, so a replayed graph gives eager scoring's bits (tested on a GPU). A packed
    forward's 4-D mask is used as it is, eager or captured. The few-shot
    prefix common to every sequence runs once per :meth:`run` and its cache is copied to each batch
    that uses it (a batch padded beyond a sliding attention window does not; see the module docstring).
    """

    batches: list[_Batch]
    prefix: dict[str, torch.Tensor] | None  # the shared prefix's forward inputs, (copies, 1 + P) each
    cache_argument: str | None
    spans: list[tuple[int, int, int]]  # (slot, choice, tokens) in target order
    choices: tuple[int, ...]  # per slot: its number of continuations
    indices: tuple[int, ...]
    golds: tuple[int, ...]
    n_tokens: int  # per copy: the examples' tokens run through the model, a shared prefix once
    copies: int = 1

    @classmethod
    def build(cls, model: torch.nn.Module, encoded: EncodedTask, indices: Sequence[int] | None = None, *,
              batch_size: int = BATCH_SIZE, padding: Padding = "auto", forward_cost: ForwardCost = "auto",
              device: torch.device | str | None = None, copies: int = 1,
              packing: PackingChoice = "auto") -> ScoringPlan:
        if batch_size < 1:
            raise SieveError(f"batch_size must be at least 1, got {batch_size}")
        if copies < 1:
            raise SieveError(f"copies must be at least 1, got {copies}")
        indices = list(range(len(encoded))) if indices is None else [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(encoded):
                raise SieveError(f"example index {i} out of range for {len(encoded)} examples")
        device = torch.device(device) if device is not None else _model_device(model)
        features = forward_features(model)
        if padding == "auto":
            padding = "left" if features.position_ids else "right"
        if padding == "left" and not features.position_ids:
            raise SieveError("left padding needs a model whose forward honours position_ids")
        keep_logits = padding == "left" and features.logits_to_keep
        cache_argument = features.cache_argument if padding == "left" else None
        jobs = sorted(build_jobs(encoded, indices), key=lambda j: -len(j.tokens))
        prefix = _common_prefix(jobs, max((len(t[2]) for j in jobs for t in j.targets), default=0)) \
            if cache_argument and len(jobs) > 1 else 0
        if prefix < MIN_SHARED_PREFIX:
            prefix = 0
        if forward_cost == "auto":
            forward_cost = forward_cost_tokens(model)
        if forward_cost is not None:  # a padded row costs K copies, a forward's launch once: F/K per copy
            forward_cost = -(-forward_cost // copies)
        lengths = [len(j.tokens) - prefix for j in jobs]
        bounds = bucket_bounds(lengths, batch_size, forward_cost)
        rows = packed_layout(model, features, lengths, bounds, packing, forward_cost, batch_size, prefix)
        batches, spans = [], []
        for members in rows.members if rows else ():
            batches.append(_plan_packed([jobs[i] for i in members], prefix, rows.inline, device, spans, copies,
                                        next(model.parameters()).dtype))
        for start, stop in () if rows else bounds:
            batch = jobs[start:stop]
            shared = prefix > 0 and not (
                features.attention_window is not None and _padded_beyond(batch, features.attention_window))
            if prefix and not shared:
                _note_window(model, features.attention_window)
            batches.append(_plan_batch(batch, prefix if shared else 0, padding, keep_logits, device, spans, copies))
        used = any(b.shared for b in batches)
        return cls(
            batches=batches,
            prefix=_prefix_inputs(jobs[0].tokens[:prefix], device, copies) if used else None,
            cache_argument=cache_argument,
            spans=spans,
            choices=tuple(len(encoded.continuations[i]) for i in indices),
            indices=tuple(indices),
            golds=tuple(encoded.golds[i] for i in indices),
            n_tokens=(prefix if used or (rows and rows.inline) else 0) + sum(b.real_tokens for b in batches),
            copies=copies,
        )

    def run(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p, is_greedy)`` of every target token, ``(copies, targets)`` in target order, left on
        the device."""
        past = None
        if self.prefix is not None:
            past = output_cache(model(**self.prefix, use_cache=True))
        users = sum(b.shared for b in self.batches)
        picked, hits = [], []
        for batch in self.batches:
            kwargs = dict(batch.kwargs)
            if batch.shared:
                users -= 1
                cache = copy.deepcopy(past) if users else past
                cache.batch_repeat_interleave(batch.rows)
                kwargs[self.cache_argument] = cache
            logits = model(**kwargs).logits
            lsm = logits[batch.read_rows, batch.read_cols].float().log_softmax(-1)
            picked.append(lsm[batch.owners, batch.tokens].double().view(self.copies, -1))
            hits.append((lsm.argmax(-1)[batch.owners] == batch.tokens).view(self.copies, -1))
        return torch.cat(picked, 1), torch.cat(hits, 1)

    def collect(self, picked: torch.Tensor, hits: torch.Tensor) -> list[ChoiceScores]:
        """The :class:`ChoiceScores` of each copy from :meth:`run`'s tensors: one device→host transfer each."""
        picked, hits = picked.cpu().numpy(), hits.cpu().numpy()
        return [self._choice_scores(p, h) for p, h in zip(picked, hits, strict=True)]

    def _choice_scores(self, picked: np.ndarray, hits: np.ndarray) -> ChoiceScores:
        logprob_of = [np.zeros(n, dtype=np.float64) for n in self.choices]
        greedy = [np.zeros(n, dtype=bool) for n in self.choices]
        at = 0
        for slot, choice, n in self.spans:
            logprob_of[slot][choice] = float(picked[at:at + n].sum())
            greedy[slot][choice] = bool(hits[at:at + n].all())
            at += n
        return ChoiceScores(logprobs=logprob_of, greedy=greedy, indices=self.indices, golds=self.golds,
                            n_tokens=self.n_tokens)

    def score(self, model: torch.nn.Module) -> list[ChoiceScores]:
        """Run eagerly (``inference_mode``, eval mode) and collect: one :class:`ChoiceScores` per copy."""
        with evaluating(model), torch.inference_mode():
            return self.collect(*self.run(model))


def _prefix_mask(prefix: int) -> torch.Tensor:
    """The shared prefix's attention mask, ``(1, prefix + 1)``: a masked pad, then the prefix."""
    return torch.cat([torch.zeros((1, 1), dtype=torch.long), torch.ones((1, prefix), dtype=torch.long)], 1)


def _prefix_inputs(tokens: Sequence[int], device: torch.device, copies: int = 1) -> dict[str, torch.Tensor]:
    """The shared prefix's forward inputs, ``copies`` rows, on ``device`` once (a graph replay may copy
    nothing from the host): a masked pad, then the prefix at positions ``0 … P−1``."""
    mask = _prefix_mask(len(tokens)).repeat(copies, 1)
    return {"input_ids": torch.tensor([(0, *tokens)], dtype=torch.long).repeat(copies, 1).to(device),
            "attention_mask": mask.to(device), "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(device)}


def _plan_batch(batch: Sequence[_Job], prefix: int, padding: str, keep_logits: bool, device: torch.device,
                spans: list[tuple[int, int, int]], copies: int = 1) -> _Batch:
    """One batch's input tensors (rows without the first ``prefix`` tokens, padded as asked, the whole
    batch ``copies`` times) and the gather indices of its targets, copy after copy; appends the
    targets' spans to ``spans`` (once: they are the same in every copy).

    A target's continuation of ``n`` tokens is predicted by the ``n`` positions before its row's end;
    positions shared by several targets (all choices of a single-token example) are normalised once.
    """
    keep = max(len(t[2]) for job in batch for t in job.targets)
    rows_tokens = [job.tokens[prefix:] for job in batch]
    width = max(len(t) for t in rows_tokens) + 1  # at least one masked column: see ScoringPlan
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    ends = []
    for row, tokens in enumerate(rows_tokens):
        n = len(tokens)
        cols = slice(width - n, width) if padding == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(tokens, dtype=torch.long)
        mask[row, cols] = 1
        ends.append(width if padding == "left" else n)
    kwargs: dict[str, Any] = {"input_ids": ids.repeat(copies, 1).to(device), "use_cache": prefix > 0}
    full_mask = torch.cat([_prefix_mask(prefix).expand(len(batch), -1), mask], 1) if prefix else mask
    kwargs["attention_mask"] = full_mask.repeat(copies, 1).to(device)
    shown = width
    if padding == "left":
        kwargs["position_ids"] = (prefix + (mask.cumsum(-1) - 1).clamp(min=0)).repeat(copies, 1).to(device)
        if keep_logits:
            kwargs["logits_to_keep"] = keep
            shown = keep
    read_rows, read_cols, owners, tokens = [], [], [], []
    position_of: dict[tuple[int, int], int] = {}
    for row, job in enumerate(batch):
        stop = ends[row] - (width - shown)
        for slot, choice, cont in job.targets:
            first = stop - len(cont)
            for offset, token in enumerate(cont):
                key = (row, first + offset)
                if key not in position_of:
                    position_of[key] = len(position_of)
                    read_rows.append(key[0])
                    read_cols.append(key[1])
                owners.append(position_of[key])
                tokens.append(token)
            spans.append((slot, choice, len(cont)))

    def on_device(values: list[int], step: int = 0) -> torch.Tensor:
        return _per_copy(values, copies, device, step)

    return _Batch(kwargs, prefix > 0, len(batch), on_device(read_rows, len(batch)), on_device(read_cols),
                  on_device(owners, len(position_of)), on_device(tokens), int(mask.sum()))


def _per_copy(values: list[int], copies: int, device: torch.device, step: int = 0) -> torch.Tensor:
    """``values`` once per copy on ``device``, copy ``c`` shifted by ``c · step``."""
    one = torch.tensor(values, dtype=torch.long)
    return torch.cat([one + c * step for c in range(copies)]).to(device)


def _plan_packed(batch: Sequence[_Job], prefix: int, inline: bool, device: torch.device,
                 spans: list[tuple[int, int, int]], copies: int, dtype: torch.dtype) -> _Batch:
    """One packed row (the jobs without their first ``prefix`` tokens one after another, after the
    prefix itself where ``inline``, ``copies`` times) and the gather indices of its targets; appends
    the targets' spans to ``spans``. The logits are computed at the read positions only
    (``logits_to_keep`` as indices), in first-read order."""
    rows_tokens = [job.tokens[prefix:] for job in batch]
    lengths = [len(t) for t in rows_tokens]
    lead = prefix if inline else 0
    context = _prefix_mask(prefix)[0] if prefix and not inline else torch.zeros(0, dtype=torch.long)
    ids = torch.tensor([[*batch[0].tokens[:lead], *(token for tokens in rows_tokens for token in tokens)]],
                       dtype=torch.long)
    position_of: dict[int, int] = {}
    owners, tokens = [], []
    stop = lead
    for job, n in zip(batch, lengths, strict=True):
        stop += n
        for slot, choice, cont in job.targets:
            for offset, token in enumerate(cont):
                owners.append(position_of.setdefault(stop - len(cont) + offset, len(position_of)))
                tokens.append(token)
            spans.append((slot, choice, len(cont)))
    read = len(position_of)
    shared = prefix > 0 and not inline
    kwargs = {"input_ids": ids.repeat(copies, 1).to(device), "use_cache": shared,
              "attention_mask": packed_mask(lengths, context, dtype, lead).repeat(copies, 1, 1, 1).to(device),
              "position_ids": packed_positions(lengths, prefix, lead).repeat(copies, 1).to(device),
              "logits_to_keep": torch.tensor(list(position_of), dtype=torch.long).to(device)}
    return _Batch(kwargs, shared, 1, _per_copy([0] * read, copies, device, 1),
                  _per_copy(list(range(read)), copies, device), _per_copy(owners, copies, device, read),
                  _per_copy(tokens, copies, device), sum(lengths))


def score_examples(
    model: torch.nn.Module,
    encoded: EncodedTask,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    padding: Padding = "auto",
    forward_cost: ForwardCost = "auto",
    packing: PackingChoice = "auto",
) -> ChoiceScores:
    """Log-likelihood of every continuation of the selected examples (see module docstring).

    ``padding="auto"`` pads on the left (with ``position_ids`` and ``logits_to_keep``) when the
    model's ``forward`` accepts them, else on the right; the result is the same. Batches hold at most
    ``batch_size`` sequences, length-bucketed by ``forward_cost`` (:func:`bucket_bounds`; ``"auto"``:
    :func:`forward_cost_tokens`; ``None``: plain slices), or packed into unpadded rows where
    ``packing`` says (:data:`PackingChoice`).
    """
    plan = ScoringPlan.build(model, encoded, indices, batch_size=batch_size, padding=padding,
                             forward_cost=forward_cost, device=device, packing=packing)
    log.debug("scoring %d examples: %d batches, %d forward tokens", len(plan.indices), len(plan.batches),
              plan.n_tokens)
    return plan.score(model)[0]


def _padded_beyond(batch: Sequence[_Job], window: int) -> bool:
    """Rows of different lengths (so some are padded) and the longest longer than ``window``."""
    lengths = {len(j.tokens) for j in batch}
    return len(lengths) > 1 and max(lengths) > window


_WINDOW_NOTED: set[str] = set()


def _note_window(model: torch.nn.Module, window: int) -> None:
    name = type(model).__name__
    if name not in _WINDOW_NOTED:
        _WINDOW_NOTED.add(name)
        log.info("%s: batches longer than its %d-token sliding attention window run without the shared few-shot "
                 "prefix (same scores, more forward tokens)", name, window)


def _common_prefix(jobs: Sequence[_Job], keep: int) -> int:
    """Longest token prefix shared by every job, leaving at least ``keep`` tokens in each."""
    first = jobs[0].tokens
    limit = min(len(j.tokens) for j in jobs) - keep
    n = 0
    while n < limit and all(j.tokens[n] == first[n] for j in jobs):
        n += 1
    return n
