"""A model's identity besides its prunable weights: what else decides the numbers it computes.

The weights hash (:func:`sieve.models.matrix.weights_hash`) covers the prunable matrices. The same
weights give other logits under another ``config.json`` (``rms_norm_eps``, ``rope_theta``, the
activation, the number of KV heads) and other scores under another tokenizer (vocabulary, merges,
normalisation, special tokens), so a search's fitness values and an allocation's masks belong to
all three. :class:`ModelIdentity` records the config *as loaded* (minus provenance and runtime
switches that change no output) and a digest of the tokenizer; a resume or an allocation made for
another identity is refused naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sieve.config import Frozen, differences

#: config keys that change no output: provenance, the load dtype (recorded on its own), runtime switches
NOT_FUNCTIONAL = frozenset({"transformers_version", "dtype", "torch_dtype", "use_cache", "output_attentions",
                            "output_hidden_states", "return_dict", "initializer_range"})


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def functional_config(config: Any) -> dict[str, Any]:
    """A ``PretrainedConfig`` as a JSON mapping of the keys that shape the model's outputs (private
    ``_name_or_path`` / ``_attn_implementation`` keys and :data:`NOT_FUNCTIONAL` left out)."""
    body = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in body.items() if not k.startswith("_") and k not in NOT_FUNCTIONAL}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 (16 hex) of what maps text to ids: a fast tokenizer's full serialisation (vocabulary,
    merges, normaliser, pre-tokeniser, post-processor; not its momentary padding/truncation
    settings), or a slow one's vocabulary, plus the special tokens and the padding side."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body: Any = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    else:
        body = sorted(tokenizer.get_vocab().items())
    return _digest({"tokenizer": body, "special": getattr(tokenizer, "special_tokens_map", {}),
                    "padding_side": getattr(tokenizer, "padding_side", None)})


class ModelIdentity(Frozen):
    """The loaded model's functional config and its tokenizer's digest."""

    config: dict[str, Any]
    tokenizer: str

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> ModelIdentity:
        return cls(config=functional_config(model.config), tokenizer=tokenizer_digest(tokenizer))

    @property
    def digests(self) -> dict[str, str]:
        """``{"config.json": ..., "tokenizer": ...}``: the compact record an allocation file keeps."""
        return {"config.json": _digest(self.config), "tokenizer": self.tokenizer}

    def changes(self, recorded: ModelIdentity | Mapping[str, str]) -> list[str]:
        """What differs from ``recorded`` (then) to this identity (now): config keys by name when a whole
        identity was recorded, else the part whose digest differs; ``[]`` when nothing did."""
        if isinstance(recorded, ModelIdentity):
            found = [f"config.json {d}" for d in differences(recorded.config, self.config)]
            if recorded.tokenizer != self.tokenizer:
                found.append(f"tokenizer: digest {recorded.tokenizer} then, {self.tokenizer} now")
            return found
        now = self.digests
        return [f"{part}: digest {recorded[part]} then, {now[part]} now"
                for part in now if recorded.get(part) not in (None, now[part])]
