"""What a model's ``forward`` really does with the optional inputs sieve's fast paths rely on.

sieve's scorer is fastest when the model (1) honours ``position_ids`` with left padding, (2) computes
logits for the last ``k`` positions only (``logits_to_keep``), and (3) reuses a KV cache for a
shared few-shot prefix that is computed once and repeated over the batch. Library versions rename
such arguments (transformers 5.2x: ``past_key_values`` → ``cache``, on input and output) and a
``forward(**kwargs)`` swallows an unknown name silently, so a signature check is not evidence.
:func:`forward_features` therefore *runs* each feature once on a few tokens and compares the result
with a plain forward:

* ``position_ids``: ``[pad, pad, x]`` with a mask and explicit positions gives the logits of ``x``;
* ``logits_to_keep``: asking for ``k`` positions returns exactly the last ``k`` logits;
* ``cache_argument``: the prefix's cache, repeated over two rows (``batch_repeat_interleave``) and
  passed back under that name with left-padded suffixes, gives the full sequences' logits. Both the
  current and the previous name are tried.
* ``packed_rows``: two suffixes one after the other in one row, after the prefix's cache, under a
  4-D additive mask (:func:`packed_mask`: each token sees the prefix and its own sequence's earlier
  tokens) with positions restarting per sequence (:func:`packed_positions`) and ``logits_to_keep``
  as a tensor of positions, give each sequence's own logits. transformers returns a 4-D mask as it
  is, for every layer type: a sliding window is not applied to it (the scorer packs only sequences
  within the window).

A feature that fails is switched off with one warning naming it (once per model class); results
stay the same, only slower. The probe costs a handful of forwards of under ten tokens and is cached
per model object.

One property is read from the config instead, because a probe would need more tokens than the window
itself: ``attention_window``, the sliding window of models whose layers attend only to their last
``W`` keys (Gemma 2/3: 512 or 4096 on every sliding layer; Mistral). transformers builds that window
from *cache indices*, not from ``position_ids``, so left padding at the start of a row is harmless
(every real token moves by the same amount) but padding placed *between* a shared prefix and a
shorter suffix widens the row's index distances by the pad width: for rows longer than ``W``,
keys that an unpadded run would see fall out of the window. The scorer therefore runs such batches
without the shared prefix (``tests/models/gemma3`` shows both the error and the exact result).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: KV-cache argument names, newest first (transformers ≥ 5.2x: ``cache``; before: ``past_key_values``).
CACHE_ARGUMENTS = ("cache", "past_key_values")


@dataclass(frozen=True)
class ForwardFeatures:
    position_ids: bool
    logits_to_keep: bool
    cache_argument: str | None
    #: sliding attention window in tokens (``None``: every layer sees the whole sequence)
    attention_window: int | None = None
    #: several sequences in one row: a 4-D additive attention mask, restarting ``position_ids`` and
    #: ``logits_to_keep`` as a tensor of positions (:mod:`sieve.scoring.buckets`)
    packed_rows: bool = False

    def lost(self) -> list[str]:
        lost = []
        if not self.position_ids:
            lost.append("left padding with position_ids (scoring pads on the right and computes every logit)")
        if not self.logits_to_keep:
            lost.append("logits_to_keep (the vocabulary projection runs on every position)")
        if self.cache_argument is None:
            lost.append("shared few-shot prefix through the KV cache (about 2.5x more forward tokens)")
        if not self.packed_rows:
            lost.append("packed rows (a 4-D attention mask with logits_to_keep indices; every row is padded to its "
                        "length bucket)")
        return lost


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under its current or previous name (``None`` if none)."""
    for name in CACHE_ARGUMENTS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def attention_window(config: Any) -> int | None:
    """The sliding window of a config whose layers (some or all) attend to the last ``W`` keys only.

    ``sliding_window`` is the name every transformers family uses; it is ignored where the config
    switches it off (Qwen2's ``use_sliding_window=False``) or lists no sliding layer in ``layer_types``.
    """
    window = getattr(config, "sliding_window", None)
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def packed_mask(lengths: Sequence[int], context: torch.Tensor, dtype: torch.dtype, lead: int = 0) -> torch.Tensor:
    """The additive mask ``(1, 1, T, C + T)`` of one packed row of ``lead`` tokens then sequences of
    ``lengths`` (``T = lead + Σ lengths``) after ``C`` context columns, ``context`` saying which of
    those every token may see: 0 where token ``i`` may attend key ``j`` (a context column it may
    see, an earlier token of its own sequence or of the lead, a prefix every sequence shares), the
    dtype's minimum elsewhere. Every token sees itself, so no row of the softmax is empty."""
    segment = torch.repeat_interleave(torch.arange(-1, len(lengths)), torch.tensor([lead, *lengths], dtype=torch.long))
    total = len(segment)
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    own = ((segment[:, None] == segment[None, :]) | (segment[None, :] == -1)) & causal
    allowed = torch.cat([context.to(torch.bool).expand(total, -1), own], 1)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def packed_positions(lengths: Sequence[int], start: int, lead: int = 0) -> torch.Tensor:
    """``(1, T)`` position ids: the ``lead`` tokens count from 0, every sequence from ``start`` (the
    shared prefix's length)."""
    return torch.cat([torch.arange(lead), *(torch.arange(n) + start for n in lengths)]).unsqueeze(0)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, its mode restored after. A model in eval mode already
    (what sieve loads) is left alone: ``eval()`` and ``train()`` walk every module (~420 in an 8B
    Llama), and a search scores thousands of times."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, ForwardFeatures] = weakref.WeakKeyDictionary()
_WARNED: set[tuple[str, str]] = set()


def forward_features(model: torch.nn.Module) -> ForwardFeatures:
    """Probe (once per model object) which fast paths ``model.forward`` honours; warn for each lost one."""
    if model in _CACHE:
        return _CACHE[model]
    features = _probe(model)
    _CACHE[model] = features
    for what in features.lost():
        key = (type(model).__name__, what)
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("%s: %s is not available with this transformers version; results are unchanged, only slower",
                        type(model).__name__, what)
    return features


class _Probe:
    """Runs each check on a few tokens; a check that raises or disagrees means "off"."""

    def __init__(self, model: torch.nn.Module) -> None:
        param = next(model.parameters())
        vocab = int(getattr(model.config, "vocab_size", 0) or 0) or 2
        self.model = model
        self.ids = (torch.arange(8, device=param.device) * 7 + 3).remainder(vocab).unsqueeze(0)
        self.dtype = param.dtype
        self.tolerance = 1e-3 if param.dtype == torch.float32 else 3e-2
        self.reference = model(input_ids=self.ids, use_cache=False).logits

    def close(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Same logits up to rounding: the largest difference is a small fraction of the logits'
        spread (a swallowed argument gives differences of the order of the spread itself)."""
        if a.shape != b.shape:
            return False
        a, b = a.float(), b.float()
        spread = (a.amax(-1) - a.amin(-1)).clamp_min(1e-6)
        return bool(torch.isfinite(a).all()) and float(((a - b).abs().amax(-1) / spread).max()) <= self.tolerance

    def passes(self, check) -> bool:
        try:
            return bool(check())
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            log.debug("forward probe %s failed: %s: %s", check.__name__, type(exc).__name__, exc)
            return False

    def position_ids(self) -> bool:
        ids, n = self.ids, self.ids.shape[1]
        padded = torch.cat([torch.zeros_like(ids[:, :2]), ids], 1)
        mask = torch.cat([torch.zeros_like(ids[:, :2]), torch.ones_like(ids)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=padded, attention_mask=mask, position_ids=positions, use_cache=False).logits
        return self.close(logits[:, -n:], self.reference)

    def logits_to_keep(self) -> bool:
        logits = self.model(input_ids=self.ids, use_cache=False, logits_to_keep=2).logits
        return self.close(logits, self.reference[:, -2:])

    def cache(self, name: str) -> bool:
        """The scorer's exact use: a 4-token prefix once, its cache repeated over two rows, then two
        suffixes of different lengths left-padded after the prefix, masked and positioned."""
        model, ids, prefix = self.model, self.ids, 4
        full_b = torch.cat([ids[:, :prefix], ids[:, prefix + 1:]], 1)
        past = output_cache(model(input_ids=ids[:, :prefix], use_cache=True))
        if past is None:
            return False
        past.batch_repeat_interleave(2)
        suffix_a, suffix_b = ids[0, prefix:], full_b[0, prefix:]
        width, short = len(suffix_a), len(suffix_b)
        tokens = torch.zeros((2, width), dtype=ids.dtype, device=ids.device)
        mask = torch.zeros_like(tokens)
        tokens[0], mask[0] = suffix_a, 1
        tokens[1, width - short:], mask[1, width - short:] = suffix_b, 1
        full_mask = torch.cat([torch.ones_like(tokens[:, :prefix]), mask], 1)
        positions = prefix + (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=tokens, attention_mask=full_mask, position_ids=positions, use_cache=True,
                       **{name: past}).logits
        ref_b = model(input_ids=full_b, use_cache=False).logits[:, prefix:]
        return self.close(logits[:1], self.reference[:, prefix:]) and self.close(logits[1:, width - short:], ref_b)

    def packed_rows(self, name: str | None) -> bool:
        """The scorer's packed use: after a 4-token prefix's cache (under ``name``; none: no prefix), two
        suffixes in one row under a 4-D additive mask with restarting positions, the logits asked for
        at every position but the first, by index."""
        model, ids = self.model, self.ids
        prefix = 4 if name else 0
        suffix_a, suffix_b = ids[0, prefix:], ids[0, prefix + 1:]
        ref_b = model(input_ids=torch.cat([ids[:, :prefix], suffix_b[None]], 1), use_cache=False).logits[:, prefix:]
        lengths = [len(suffix_a), len(suffix_b)]
        kwargs: dict[str, Any] = {}
        if name:
            kwargs[name] = output_cache(model(input_ids=ids[:, :prefix], use_cache=True))
            if kwargs[name] is None:
                return False
        context = torch.ones(prefix, dtype=torch.bool)
        mask = packed_mask(lengths, context, self.dtype).to(ids.device)
        keep = torch.arange(1, sum(lengths), device=ids.device)
        logits = model(input_ids=torch.cat([suffix_a, suffix_b])[None], attention_mask=mask,
                       position_ids=packed_positions(lengths, prefix).to(ids.device), use_cache=bool(name),
                       logits_to_keep=keep, **kwargs).logits
        a = len(suffix_a)
        return (self.close(logits[:, :a - 1], self.reference[:, prefix + 1:])
                and self.close(logits[:, a - 1:], ref_b))


@torch.inference_mode()
def _probe(model: torch.nn.Module) -> ForwardFeatures:
    with evaluating(model):
        probe = _Probe(model)
        positions = probe.passes(probe.position_ids)
        keep = probe.passes(probe.logits_to_keep)
        cache = None
        if positions:
            cache = next((name for name in CACHE_ARGUMENTS if probe.passes(lambda: probe.cache(name))), None)
        packed = positions and probe.passes(lambda: probe.packed_rows(cache))
        return ForwardFeatures(positions, keep, cache, attention_window(getattr(model, "config", None)), packed)
