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
  KV cache, each batch runs the common token prefix once and only the per-example suffixes
  (about 2.5× fewer forward tokens on the built-in task); on a model with a sliding attention
  window (Gemma 3), a batch whose rows differ in length and exceed the window runs without it,
  because the padding between prefix and suffix would shift that window
  (:mod:`sieve.models.forward`).
* **Batching**: requests are sorted by length (least padding) and run ``batch_size`` at a time
  under ``torch.inference_mode``. When the model accepts ``position_ids``, sequences are padded
  on the left with explicit positions, so every scored position sits in the last ``k`` columns
  and ``logits_to_keep=k`` skips the vocabulary projection of the rest; otherwise they are
  padded on the right. Either way the padding is masked and does not change the scores (tests
  check both against one unpadded forward per request).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.models.forward import forward_features, output_cache

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


def score_examples(
    model: torch.nn.Module,
    encoded: EncodedTask,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    padding: Padding = "auto",
) -> ChoiceScores:
    """Log-likelihood of every continuation of the selected examples (see module docstring).

    ``padding="auto"`` pads on the left (with ``position_ids`` and ``logits_to_keep``) when the
    model's ``forward`` accepts them, else on the right; the result is the same.
    """
    if batch_size < 1:
        raise SieveError(f"batch_size must be at least 1, got {batch_size}")
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
    window = features.attention_window

    logprobs = [np.zeros(len(encoded.continuations[i]), dtype=np.float64) for i in indices]
    greedy = [np.zeros(len(encoded.continuations[i]), dtype=bool) for i in indices]
    jobs = sorted(build_jobs(encoded, indices), key=lambda j: -len(j.tokens))
    n_tokens = 0
    log.debug("scoring %d examples: %d sequences, %d tokens, %s padding", len(indices),
              len(jobs), n_tokens, padding)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start:start + batch_size]
                n_tokens += _score_batch(model, batch, device, padding, keep_logits, logprobs, greedy, cache_argument,
                                         window)
    finally:
        model.train(was_training)
    return ChoiceScores(
        logprobs=logprobs,
        greedy=greedy,
        indices=tuple(indices),
        golds=tuple(encoded.golds[i] for i in indices),
        n_tokens=n_tokens,
    )


def _score_batch(
    model: torch.nn.Module,
    batch: Sequence[_Job],
    device: torch.device,
    padding: str,
    keep_logits: bool,
    logprobs: list[np.ndarray],
    greedy: list[np.ndarray],
    cache_argument: str | None = None,
    window: int | None = None,
) -> int:
    """Score one batch in place; returns the tokens run through the model.

    With ``cache_argument`` (left padding and a KV cache the model reuses under that name, as
    probed by :func:`~sieve.models.forward.forward_features`), the batch's longest common token
    prefix (a few-shot prompt) runs once, its cache is repeated over the rows, and only the
    suffixes run: suffixes are left-padded *after* the prefix, masked, and positioned from the
    prefix length. With a sliding attention ``window``, that padding widens each shorter row's
    distances to the prefix, so the prefix is shared only when no row is padded or the longest
    row fits in the window (then no distance reaches it).
    """
    keep = max(len(t[2]) for job in batch for t in job.targets)
    prefix = _common_prefix(batch, keep) if cache_argument and len(batch) > 1 else 0
    if prefix and window is not None and _padded_beyond(batch, window):
        _note_window(model, window)
        prefix = 0
    past = None
    if prefix >= MIN_SHARED_PREFIX:
        head = torch.tensor([batch[0].tokens[:prefix]], dtype=torch.long, device=device)
        past = output_cache(model(input_ids=head, use_cache=True))
        past.batch_repeat_interleave(len(batch))
        batch = [_Job(j.tokens[prefix:], j.targets) for j in batch]
    else:
        prefix = 0
    width = max(len(j.tokens) for j in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    ends = []  # column after each row's last real token
    for row, job in enumerate(batch):
        n = len(job.tokens)
        cols = slice(width - n, width) if padding == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(job.tokens, dtype=torch.long)
        mask[row, cols] = 1
        ends.append(width if padding == "left" else n)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "use_cache": past is not None}
    full_mask = torch.cat([torch.ones((len(batch), prefix), dtype=torch.long), mask], 1) if prefix else mask
    kwargs["attention_mask"] = full_mask.to(device)
    if past is not None:
        kwargs[cache_argument] = past
    if padding == "left":
        kwargs["position_ids"] = (prefix + (mask.cumsum(-1) - 1).clamp(min=0)).to(device)
        if keep_logits:
            kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    _read_targets(logits, batch, [end - (width - logits.shape[1]) for end in ends], logprobs, greedy)
    return prefix + int(mask.sum())


MIN_SHARED_PREFIX = 16
_WINDOW_NOTED: set[str] = set()


def _padded_beyond(batch: Sequence[_Job], window: int) -> bool:
    """Rows of different lengths (so some are padded) and the longest longer than ``window``."""
    lengths = {len(j.tokens) for j in batch}
    return len(lengths) > 1 and max(lengths) > window


def _note_window(model: torch.nn.Module, window: int) -> None:
    name = type(model).__name__
    if name not in _WINDOW_NOTED:
        _WINDOW_NOTED.add(name)
        log.info("%s: batches longer than its %d-token sliding attention window run without the shared few-shot "
                 "prefix (same scores, more forward tokens)", name, window)


def _read_targets(logits: torch.Tensor, batch: Sequence[_Job], stops: Sequence[int], logprobs: list[np.ndarray],
                  greedy: list[np.ndarray]) -> None:
    """Every target's log-likelihood and greedy flag from one batch's logits, with one gather and
    one device→host transfer per batch (never one per example).

    A target's continuation of ``n`` tokens is predicted by the ``n`` positions before its row's
    ``stop``; positions shared by several targets (all choices of a single-token example) are
    normalised once. log-softmax in float32, the sum over a continuation's tokens in float64.
    """
    rows, cols, tokens, owners, spans = [], [], [], [], []
    position_of: dict[tuple[int, int], int] = {}
    for row, job in enumerate(batch):
        for slot, choice, cont in job.targets:
            first = stops[row] - len(cont)
            for offset, token in enumerate(cont):
                key = (row, first + offset)
                if key not in position_of:
                    position_of[key] = len(position_of)
                    rows.append(key[0])
                    cols.append(key[1])
                owners.append(position_of[key])
                tokens.append(token)
            spans.append((slot, choice, len(cont)))
    device = logits.device
    lsm = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].float().log_softmax(-1)
    owner = torch.tensor(owners, device=device)
    token = torch.tensor(tokens, device=device)
    picked = lsm[owner, token].double().cpu()
    hit = (lsm.argmax(-1)[owner] == token).cpu()
    at = 0
    for slot, choice, n in spans:
        logprobs[slot][choice] = float(picked[at:at + n].sum())
        greedy[slot][choice] = bool(hit[at:at + n].all())
        at += n




def _common_prefix(batch: Sequence[_Job], keep: int) -> int:
    """Longest token prefix shared by every job, leaving at least ``keep`` tokens in each."""
    first = batch[0].tokens
    limit = min(len(j.tokens) for j in batch) - keep
    n = 0
    while n < limit and all(j.tokens[n] == first[n] for j in batch):
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

