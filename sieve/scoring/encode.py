"""A task tokenised once, token-for-token as lm-eval's HFLM would feed it.

lm-eval's ``HFLM.loglikelihood`` re-tokenises every request on every call; sieve encodes a task once
(:func:`encode_task`) and scores any model on the result (:mod:`sieve.scoring.plan`).

**Tokenisation mirrors HFLM** (``lm_eval/api/model.py::_encode_pair`` and
``models/huggingface.py::tok_encode``): trailing whitespace of the context moves to the continuation;
``whole = enc(context + continuation)``, ``ctx = enc(context)``, ``cont = whole[len(ctx):]``, with the
tokenizer's own special tokens (so a BOS only where the tokenizer adds one) except when the text
already starts with the prefix token. An empty context becomes the prefix token (BOS, else EOS) and
the continuation is encoded without special tokens. Inputs are ``(ctx + cont)[-(max_length + 1):][:-1]``
(left truncation, :func:`request_input`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sieve.errors import SieveError


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
        return sum(len(request_input(self.contexts[i], c, self.max_length))
                   for c in self.continuations[i])


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


def request_input(ctx: Sequence[int], cont: Sequence[int], max_length: int) -> tuple[int, ...]:
    """HFLM's model input for one request: ``(ctx + cont)[-(max_length + 1):][:-1]``."""
    return tuple((list(ctx) + list(cont))[-(max_length + 1):][:-1])
