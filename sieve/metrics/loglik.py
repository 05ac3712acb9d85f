"""Fast batched log-likelihood scoring of task examples, token-for-token like lm-eval's HFLM.

lm-eval's ``HFLM.loglikelihood`` re-tokenises every request on every call, which is far too
slow to run once per search candidate. sieve tokenises a task once (:func:`encode_task`) and
then scores any model on it (:func:`score_examples`):

* **Tokenisation mirrors HFLM** (``lm_eval/api/model.py::_encode_pair`` and
  ``models/huggingface.py::tok_encode``): trailing whitespace of the context moves to the
  continuation; ``whole = enc(context + continuation)``, ``ctx = enc(context)``,
  ``cont = whole[len(ctx):]``, with the tokenizer's own special tokens (so a BOS only where the
  tokenizer adds one) except when the text already starts with the prefix token. An empty
  context becomes the prefix token (BOS, else EOS) and the continuation is encoded without
  special tokens. Inputs are ``(ctx + cont)[-(max_length + 1):][:-1]`` (left truncation).
* **Score** of a continuation = ``sum_t log softmax(logits_{p_t})[cont_t]`` over the positions
  ``p_t`` that predict its tokens; log-softmax in float32, the sum in float64.
* **Fast path**: when every continuation of an example is one token (rotten tomatoes'
  ``" negative"`` / ``" positive"``) the inputs of all choices are the same sequence
  (``ctx[-max_length:]``), so one sequence per example is run and every choice is read from the
  last position's logits -- half the forward tokens for two choices.
* **Shared prefix**: a few-shot prompt is the same for every example; when the model takes a
  KV cache, the common token prefix runs once per scoring run and its cache is copied to every
  batch, which runs only the per-example suffixes (about 2.5× fewer forward tokens on the built-in
  task); on a model with a sliding attention window (Gemma 3), a batch whose rows differ in length
  and exceed the window runs without it, because the padding between prefix and suffix would shift
  that window (:mod:`sieve.models.forward`).
* **Batching**: requests are sorted by length and cut into *length buckets* of at most
  ``batch_size`` sequences, the cut minimising padded tokens plus a fixed cost per forward
  (:func:`bucket_bounds`; one batch of 256 few-shot reviews pads 7.4 k real suffix tokens to
  14 k), and run under ``torch.inference_mode``. When the model accepts ``position_ids``,
  sequences are padded on the left with explicit positions, so every scored position sits in the
  last ``k`` columns and ``logits_to_keep=k`` skips the vocabulary projection of the rest;
  otherwise they are padded on the right. Either way the padding is masked and does not change
  the scores (tests check both against one unpadded forward per request).
* **Packed rows**: where the model runs them (:mod:`sieve.models.forward`'s probe) and the plan's
  cost model finds them cheaper than the buckets (:mod:`sieve.metrics.packing`; large models, whose
  forwards are compute-bound), several sequences go one after another into one unpadded row under a
  4-D attention mask, with positions restarting per sequence and the logits computed at the read
  positions only; the shared prefix is then read from its cache or opens the row, whichever is
  cheaper. Scores are those of one unpadded forward per request, up to rounding (tested).
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
from typing import Any, Literal, Protocol

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.metrics.packing import pack_rows, pair_cost
from sieve.models.batched import parameter_count
from sieve.models.forward import (
    ForwardFeatures,
    evaluating,
    forward_features,
    output_cache,
    packed_mask,
    packed_positions,
)

log = logging.getLogger(__name__)

Padding = Literal["auto", "left", "right"]


class _Example(Protocol):  # sieve.data.splits.TaskExample, without importing lm-eval
    context: str
    continuations: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class EncodedTask:
    """Pre-tokenised requests: per example the context ids (its last ``max_length`` tokens)
    and the ids of each continuation, as HFLM would feed them."""

    contexts: tuple[tuple[int, ...], ...]
    continuations: tuple[tuple[tuple[int, ...], ...], ...]
    golds: tuple[int, ...]
    max_length: int

    def __len__(self) -> int:
        return len(self.contexts)

    def single_token(self, i: int) -> bool:
        """All continuations of example ``i`` are one token: the fast path applies."""
        return all(len(c) == 1 for c in self.continuations[i])

    def forward_tokens(self, i: int) -> int:
        """Tokens run through the model to score example ``i``."""
        if self.single_token(i):
            return len(self.contexts[i][-self.max_length:])
        return sum(len(_request_input(self.contexts[i], c, self.max_length))
                   for c in self.continuations[i])


@dataclass(frozen=True)
class ChoiceScores:
    """Per scored example: ``logprobs[k][j]`` = log p(continuation j | context), float64;
    ``greedy[k][j]`` = every continuation token is the argmax (lm-eval's ``is_greedy``).
    ``indices`` are the scored examples (positions in the :class:`EncodedTask`), ``golds``
    their gold choices, ``n_tokens`` the unpadded tokens run through the model."""

    logprobs: list[np.ndarray]
    greedy: list[np.ndarray]
    indices: tuple[int, ...]
    golds: tuple[int, ...]
    n_tokens: int


# --------------------------------------------------------------------------------------------
# Tokenisation (HFLM mirror)


def _prefix_token_id(tokenizer: Any) -> int | None:
    """HFLM's ``prefix_token_id``: BOS, else EOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


class _HFLMEncoder:
    """``tok_encode`` of HFLM (``add_bos_token=None``), batched."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix_id = _prefix_token_id(tokenizer)
        self.prefix_str = tokenizer.decode(self.prefix_id) if self.prefix_id is not None else None

    def encode(self, strings: Sequence[str], *, special: bool | None = None) -> list[list[int]]:
        """``special=None``: the tokenizer's default special tokens, unless the string already
        starts with the prefix token's text (then none), exactly as ``HFLM.tok_encode``."""
        out: list[list[int] | None] = [None] * len(strings)
        groups: dict[bool | None, list[int]] = {}
        for i, s in enumerate(strings):
            flag = special
            if flag is None and self.prefix_str and s.startswith(self.prefix_str):
                flag = False
            groups.setdefault(flag, []).append(i)
        for flag, idx in groups.items():
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            ids = self.tokenizer([strings[i] for i in idx], **kwargs)["input_ids"]
            for i, row in zip(idx, ids, strict=True):
                out[i] = list(row)
        return out  # type: ignore[return-value]


def encode_task(
    examples: Sequence[_Example], tokenizer: Any, max_length: int
) -> EncodedTask:
    """Tokenise ``examples`` once, as HFLM's ``loglikelihood`` would (see module docstring)."""
    if max_length < 2:
        raise SieveError(f"max_length must be at least 2, got {max_length}")
    enc = _HFLMEncoder(tokenizer)
    # Context side: strip trailing whitespace once per example (it moves to each continuation).
    stripped, tails = [], []
    for ex in examples:
        ctx = ex.context
        n_spaces = len(ctx) - len(ctx.rstrip())
        stripped.append(ctx[: len(ctx) - n_spaces])
        tails.append(ctx[len(ctx) - n_spaces:])
    nonempty = [i for i, ex in enumerate(examples) if ex.context != ""]
    ctx_ids = dict(zip(nonempty, enc.encode([stripped[i] for i in nonempty]), strict=True))
    wholes_at = [(i, j) for i in nonempty for j in range(len(examples[i].continuations))]
    whole_ids = dict(zip(wholes_at, enc.encode(
        [stripped[i] + tails[i] + examples[i].continuations[j] for i, j in wholes_at]
    ), strict=True))
    empty = [i for i, ex in enumerate(examples) if ex.context == ""]
    bare_at = [(i, j) for i in empty for j in range(len(examples[i].continuations))]
    bare_ids = dict(zip(bare_at, enc.encode(
        [examples[i].continuations[j] for i, j in bare_at], special=False
    ), strict=True))

    contexts, continuations = [], []
    for i, ex in enumerate(examples):
        if not ex.continuations:
            raise SieveError(f"example {i} has no continuation to score")
        if not 0 <= ex.gold < len(ex.continuations):
            raise SieveError(f"example {i}: gold {ex.gold} is not one of its "
                             f"{len(ex.continuations)} continuations")
        if ex.context == "":
            ctx, conts = _empty_context(
                [bare_ids[(i, j)] for j in range(len(ex.continuations))], enc.prefix_id, i
            )
        else:
            ctx = ctx_ids[i]
            conts = [whole_ids[(i, j)][len(ctx):] for j in range(len(ex.continuations))]
        if not ctx:
            raise SieveError(f"example {i}: its context encodes to no tokens")
        for j, cont in enumerate(conts):
            if not cont:
                raise SieveError(f"example {i}: continuation {j} "
                                 f"{ex.continuations[j]!r} encodes to no tokens")
            if len(cont) > max_length:
                raise SieveError(f"example {i}: continuation {j} has {len(cont)} tokens, "
                                 f"more than max_length {max_length}")
        contexts.append(tuple(ctx[-max_length:]))
        continuations.append(tuple(tuple(c) for c in conts))
    return EncodedTask(
        contexts=tuple(contexts),
        continuations=tuple(continuations),
        golds=tuple(int(ex.gold) for ex in examples),
        max_length=int(max_length),
    )


def _empty_context(
    conts: list[list[int]], prefix_id: int | None, i: int
) -> tuple[list[int], list[list[int]]]:
    """HFLM with ``context == ""``: condition on the prefix token, or -- when the continuation
    already starts with it (or there is none) -- on the continuation's first token."""
    if len(conts) != 1:
        raise SieveError(f"example {i}: an empty context needs exactly one continuation")
    (cont,) = conts
    if not cont:
        raise SieveError(f"example {i}: its continuation encodes to no tokens")
    if prefix_id is not None and prefix_id != cont[0]:
        return [prefix_id], [cont]
    return cont[:1], [cont[1:]]


def _request_input(ctx: Sequence[int], cont: Sequence[int], max_length: int) -> tuple[int, ...]:
    """HFLM's model input for one request: ``(ctx + cont)[-(max_length + 1):][:-1]``."""
    return tuple((list(ctx) + list(cont))[-(max_length + 1):][:-1])


# --------------------------------------------------------------------------------------------
# Scoring


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
            jobs.extend(_Job(_request_input(ctx, c, encoded.max_length), ((slot, j, c),))
                        for j, c in enumerate(conts))
    return jobs


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


MIN_SHARED_PREFIX = 16
ForwardCost = int | Literal["auto"] | None
#: ``"auto"``: packed rows where cheaper than length buckets; ``True``: packed rows (an error where the
#: model cannot run them); ``False``: length buckets only
PackingChoice = bool | Literal["auto"]


def forward_cost_tokens(model: torch.nn.Module) -> int:
    """A forward's fixed cost in tokens of a dense forward: what one more length bucket must save in
    padding. It is a few milliseconds at both ends of the scale — launching a small model's kernels,
    streaming a large model's weights once — i.e. ``≈ 2^39 / parameters`` tokens (SmolLM2-135M runs
    ≈ 610 k tok/s on an H100, a random 8B Llama ≈ 35 k tok/s), clamped to ``[128, 1024]``; parameters
    as one candidate sees them (:func:`~sieve.models.batched.parameter_count`)."""
    params = parameter_count(model)
    return int(min(1024, max(128, 2**39 // max(params, 1))))


def bucket_bounds(lengths: Sequence[int], batch_size: int, forward_cost: int | None = 1024) -> list[tuple[int, int]]:
    """Batches ``[start, stop)`` over ``lengths`` sorted longest first: at most ``batch_size`` rows each.

    With ``forward_cost`` the batches are *length buckets*: the partition into consecutive runs that
    minimises ``Σ_b (rows_b · width_b + forward_cost)`` — padded tokens plus the fixed cost of each
    forward, ``width_b`` being the first (longest) row of run ``b`` — found exactly by dynamic
    programming, ``O(n · batch_size)``. Without it, plain slices of ``batch_size`` rows.
    """
    n = len(lengths)
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("bucket_bounds needs lengths sorted longest first")
    if forward_cost is None or n == 0:
        return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    width = np.asarray(lengths, dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for stop in range(1, n + 1):
        starts = np.arange(max(0, stop - batch_size), stop)
        cost = best[starts] + (stop - starts) * width[starts] + forward_cost
        k = int(np.argmin(cost))
        best[stop], cut[stop] = cost[k], starts[k]
    bounds, stop = [], n
    while stop > 0:
        bounds.append((int(cut[stop]), stop))
        stop = int(cut[stop])
    return bounds[::-1]


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
              batch_size: int = 16, padding: Padding = "auto", forward_cost: ForwardCost = "auto",
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
        rows = _packed_rows(model, features, jobs, lengths, bounds, packing, forward_cost, batch_size, prefix)
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


@dataclass(frozen=True)
class _Rows:
    """A packed layout: the jobs of each row, and whether each row starts with the shared prefix
    (``inline``) instead of reading its cache from one prefix forward."""

    members: tuple[tuple[int, ...], ...]
    inline: bool


def _packed_rows(model: torch.nn.Module, features: ForwardFeatures, jobs: Sequence[_Job], lengths: Sequence[int],
                 bounds: Sequence[tuple[int, int]], packing: PackingChoice, forward_cost: int | None, batch_size: int,
                 prefix: int) -> _Rows | None:
    """Packed rows (:mod:`sieve.metrics.packing`), or ``None`` for length buckets: with
    ``packing="auto"`` where packing costs less than the buckets ``bounds`` by the same model
    (tokens run, padding included, a fixed cost per forward, every attended pair), with ``True``
    always — or one error naming why the model cannot. A shared prefix either runs once and every
    row reads its cache (one more forward) or opens every row (``prefix`` more tokens per row),
    whichever costs less."""
    if packing is False or not jobs or (packing == "auto" and forward_cost is None):
        return None
    pair = pair_cost(model)
    window = features.attention_window
    why = None
    if not features.packed_rows:
        why = "its forward does not honour a 4-D attention mask with logits_to_keep indices (see the probe's warning)"
    elif pair is None:
        why = "its config names no hidden size or layer count to weigh attention by"
    elif window is not None and max(len(j.tokens) for j in jobs) > window:
        why = f"a sequence is longer than its {window}-token sliding attention window, which a 4-D mask does not apply"
    if why is not None:
        if packing is True:
            raise SieveError(f"packed rows: {why}")
        return None
    fixed = forward_cost or 0
    cap = batch_size * max(lengths)
    context = 1 + prefix if prefix else 0
    prefix_forward = context + fixed + pair * context * context if prefix else 0.0
    cached = pack_rows(lengths, fixed, pair, context, max_tokens=cap)
    layouts = [(cached.cost + prefix_forward, _Rows(cached.rows, False))]
    if prefix:
        inline = pack_rows(lengths, fixed, pair, max_tokens=cap + prefix, lead=prefix)
        layouts.append((inline.cost, _Rows(inline.rows, True)))
    cost, rows = min(layouts, key=lambda layout: layout[0])
    buckets = prefix_forward + sum(
        (stop - start) * (lengths[start] + pair * lengths[start] * (context + lengths[start])) + fixed
        for start, stop in bounds)
    return rows if packing is True or cost < buckets else None


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
    batch_size: int = 16,
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


# --------------------------------------------------------------------------------------------
# Metrics


def metrics(scores: ChoiceScores, golds: Sequence[int] | None = None) -> dict[str, float]:
    """Accuracy and likelihood metrics of scored examples (``golds`` default: ``scores.golds``).

    * ``acc``: prediction ``argmax_j logprob_j`` (ties go to the lowest index, as ``np.argmax``
      and lm-eval do) equals gold; for single-continuation examples (``loglikelihood`` tasks)
      it is lm-eval's greedy match instead.
    * ``nll``: mean over examples of ``-logprob(gold continuation)`` (unnormalised, in nats).
    * ``choice_nll``: mean of ``-log softmax(logprobs)[gold]``, the gold's likelihood
      normalised over the choices; uniform guessing gives ``log(n_choices)``, 0 for one choice.
    """
    golds = scores.golds if golds is None else tuple(int(g) for g in golds)
    if len(golds) != len(scores.logprobs):
        raise SieveError(f"{len(golds)} golds for {len(scores.logprobs)} scored examples")
    if not golds:
        return {"acc": float("nan"), "nll": float("nan"), "choice_nll": float("nan"), "n": 0}
    acc, nll, choice_nll = [], [], []
    for lp, greedy, gold in zip(scores.logprobs, scores.greedy, golds, strict=True):
        if len(lp) == 1:
            acc.append(float(greedy[0]))
        else:
            acc.append(float(int(np.argmax(lp)) == gold))
        nll.append(-float(lp[gold]))
        log_norm = float(np.logaddexp.reduce(lp))
        choice_nll.append(log_norm - float(lp[gold]))
    return {
        "acc": float(np.mean(acc)),
        "nll": float(np.mean(nll)),
        "choice_nll": float(np.mean(choice_nll)),
        "n": len(golds),
    }

