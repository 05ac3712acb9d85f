"""Depth pruning's model surgery: remove whole decoder blocks so that the result saves as a plain
transformers folder (loadable with ``AutoModelForCausalLM.from_pretrained``, no sieve needed).

A decoder stack is more than its ``ModuleList``: the config describes every layer, and modules
carry their own block index. Removing blocks ``R`` of ``n`` keeps ``k_0 < k_1 < …`` (new block
``j`` is old block ``k_j``) and rewrites:

* the layer count (``num_hidden_layers``; GPT-2's ``n_layer``) := ``n − |R|``;
* every per-layer list — ``layer_types`` and any other list of length ``n`` that is not a token-id
  list — := ``[v[k_0], v[k_1], …]``. Sliced, never re-derived: Gemma 3's ``sliding_window_pattern``
  or Qwen2's ``max_window_layers`` rule, applied to the new numbering, would put the sliding window
  on other blocks than the ones that were trained with it. And transformers refuses to save a
  config whose ``layer_types`` length differs from the layer count, which is where recipes that set
  only the count (mergekit's passthrough) break;
* an index threshold (Qwen2's ``max_window_layers``: blocks ``i ≥ m`` slide) := ``|{k ∈ kept : k < m}|``,
  the same split on the new numbering;
* a list of block indices (Qwen-MoE's ``mlp_only_layers``) := the new indices of its kept blocks; a
  periodic rule (``decoder_sparse_step``) is spelled out the same way: step 1, every kept dense
  block listed;
* each module's ``layer_idx`` := ``j``: the KV cache is indexed by it, so a stale index would give a
  kept block another block's cache slot (or one past the end).

:func:`config_without_blocks` is the pure rule on a config dict; :class:`BlockRemoval` applies it
to a loaded model reversibly (what a search scores), :func:`remove_blocks` for good (what an export saves).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from sieve.errors import SieveError
from sieve.models.adapters import adapter_for

logger = logging.getLogger(__name__)

#: the config key holding the number of decoder blocks, first present wins
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: list fields that are never per-layer, whatever their length
NOT_PER_LAYER = frozenset({"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                           "forced_decoder_ids"})
#: index thresholds: block ``i`` is on one side iff ``i < value``
INDEX_THRESHOLDS = ("max_window_layers",)
#: lists of block indices
INDEX_LISTS = ("mlp_only_layers",)
#: module attributes holding the block's own index
INDEX_ATTRIBUTES = ("layer_idx", "layer_id", "layer_index")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, found by its architecture adapter."""
    return adapter_for(model).blocks(model)[1]


def kept_blocks(count: int, removed: Iterable[int]) -> list[int]:
    """The indices that remain of ``count`` blocks once ``removed`` are gone, in order."""
    removed = [operator.index(i) for i in removed]
    seen: set[int] = set()
    for index in removed:
        if not 0 <= index < count:
            raise SieveError(f"block {index} is out of range: the model has {count} decoder blocks (0–{count - 1})")
        if index in seen:
            raise SieveError(f"block {index} is listed twice among the blocks to remove")
        seen.add(index)
    if len(seen) == count:
        raise SieveError(f"cannot remove all {count} decoder blocks")
    return [i for i in range(count) if i not in seen]


def layer_count_key(config: Mapping[str, Any]) -> str:
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return key
    raise SieveError(f"the model config names no layer count (one of {', '.join(LAYER_COUNT_KEYS)})")


def is_per_layer(key: str, value: Any, count: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == count and key not in NOT_PER_LAYER
            and key not in INDEX_LISTS and not key.endswith(("token_id", "token_ids")))


def config_without_blocks(config: Mapping[str, Any], removed: Iterable[int]) -> dict[str, Any]:
    """``config`` (a ``PretrainedConfig.to_dict()``) rewritten for the model without blocks
    ``removed``, by the rules in this module's docstring; keys it does not concern are unchanged."""
    if config.get("per_layer_config"):
        raise SieveError("removing blocks from a config with per-layer overrides (per_layer_config) is not supported")
    key = layer_count_key(config)
    count = config[key]
    kept = kept_blocks(count, removed)
    new = {old: j for j, old in enumerate(kept)}
    out = dict(config)
    out[key] = len(kept)
    for name, value in config.items():
        if is_per_layer(name, value, count):
            out[name] = type(value)(value[k] for k in kept)
    for name in INDEX_THRESHOLDS:
        if isinstance(config.get(name), int):
            out[name] = sum(k < config[name] for k in kept)
    if config.get("num_experts") and isinstance(config.get("decoder_sparse_step"), int):
        step, dense = config["decoder_sparse_step"], set(config.get("mlp_only_layers") or ())
        out["decoder_sparse_step"] = 1
        out["mlp_only_layers"] = [j for j, k in enumerate(kept) if k in dense or (k + 1) % step]
    else:
        for name in INDEX_LISTS:
            if isinstance(config.get(name), (list, tuple)):
                out[name] = type(config[name])(new[k] for k in config[name] if k in new)
    return out


def index_attributes(block: nn.Module, index: int) -> list[tuple[nn.Module, str]]:
    """``(module, attribute)`` for every module of ``block`` that stores the block's index."""
    found = []
    for name, module in block.named_modules():
        for attr in INDEX_ATTRIBUTES:
            value = getattr(module, attr, None)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if value != index:
                raise SieveError(f"decoder block {index} holds {attr}={value} in {name or 'itself'}: "
                                 "an index scheme sieve cannot renumber")
            found.append((module, attr))
    return found


class BlockRemoval:
    """Decoder blocks taken out of a live model and put back: the reversible form of
    :func:`remove_blocks`, which a search applies per candidate so that the model it scores is,
    module for module and config field for config field, the folder an export saves.

    :meth:`show` sets which blocks are removed (relative to the original stack, any set, any
    order of calls): the block list holds the kept blocks in order, every kept module's block
    index and the decoder config are rewritten by the rules in this module's docstring, and
    ``show(())`` gives the original model back. Everything is checked when it is built."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = decoder_blocks(model)
        self.original = list(self.blocks)
        self.config = model.config.get_text_config(decoder=True)
        self.before = self.config.to_dict()
        if (count := self.before[layer_count_key(self.before)]) != len(self.original):
            raise SieveError(f"{type(model).__name__} has {len(self.original)} decoder blocks but its config counts "
                             f"{count}: cannot tell which config describes them")
        if getattr(self.config, "scale_attn_by_inverse_layer_idx", False):
            raise SieveError("a model with scale_attn_by_inverse_layer_idx scales attention by 1/(block index + 1): "
                             "removing blocks would change the kept blocks' computation")
        self.indices = [index_attributes(block, i) for i, block in enumerate(self.original)]
        self.sliding_flags = [m for m in model.modules() if isinstance(getattr(m, "has_sliding_layers", None), bool)]
        self.sliding_before = [m.has_sliding_layers for m in self.sliding_flags]
        self.removed: frozenset[int] = frozenset()
        self._touched: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.original)

    def show(self, removed: Iterable[int]) -> list[str]:
        """Blocks ``removed`` (of the original stack) out, every other block in; returns the config
        keys that now differ from the original."""
        removed = list(removed)
        kept = kept_blocks(self.count, removed)
        after = config_without_blocks(self.before, removed) if removed else dict(self.before)
        changed = [key for key, value in after.items() if value != self.before.get(key)]
        del self.blocks[:]
        self.blocks.extend(self.original[k] for k in kept)
        for new, old in enumerate(kept):
            for module, attr in self.indices[old]:
                setattr(module, attr, new)
        for key in self._touched | set(changed):
            setattr(self.config, key, after[key])
        self._touched |= set(changed)
        layer_types = getattr(self.config, "layer_types", None)
        for module, before in zip(self.sliding_flags, self.sliding_before, strict=True):
            # Qwen2-style models decide at init whether to build a sliding mask
            module.has_sliding_layers = before if not removed or layer_types is None else (
                "sliding_attention" in layer_types)
        self.removed = frozenset(removed)
        return changed


def remove_blocks(model: nn.Module, removed: Iterable[int]) -> None:
    """Remove decoder blocks ``removed`` from ``model`` in place: drop them from the block list,
    rewrite the decoder config (:func:`config_without_blocks`) and renumber every kept module's
    block index, so that ``save_pretrained`` writes a folder plain transformers loads to the same
    model. Everything is checked before anything changes."""
    removal = BlockRemoval(model)
    changed = removal.show(removed)
    logger.info("removed decoder blocks %s of %s (%d left); rewrote %s", sorted(removal.removed), type(model).__name__,
                removal.count - len(removal.removed), ", ".join(changed))
