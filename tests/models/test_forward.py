"""The fast paths are proven by behaviour on the locked transformers, and a model that ignores an
argument loses only that path, with one warning."""

import logging

import pytest
import torch

from sieve.models.forward import CACHE_ARGUMENTS, evaluating, forward_features, output_cache


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_every_fast_path_is_on_with_the_locked_transformers(name, request):
    features = forward_features(request.getfixturevalue(name))
    assert features.position_ids and features.logits_to_keep
    assert features.cache_argument in CACHE_ARGUMENTS
    assert features.lost() == []


class _Renamed(torch.nn.Module):
    """An older-style model: takes the cache as ``past_key_values`` and returns it there; swallows
    any other keyword (``cache`` included) the way ``forward(**kwargs)`` does."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **ignored):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, logits_to_keep=logits_to_keep,
                         **({CACHE_ARGUMENTS[0]: past_key_values} if past_key_values is not None else {}))
        return type("Output", (), {"logits": out.logits, "past_key_values": output_cache(out)})()


class _NoCache(_Renamed):
    """Swallows every cache argument: the shared prefix must be switched off, not silently wrong."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0, **ignored):
        return super().forward(input_ids, attention_mask, position_ids, None, use_cache, logits_to_keep)


def test_previous_cache_name_is_used_when_the_current_one_is_swallowed(llama):
    assert forward_features(_Renamed(llama)).cache_argument == "past_key_values"


def test_a_swallowed_cache_switches_the_shared_prefix_off_with_one_warning(llama, caplog):
    with caplog.at_level(logging.WARNING, logger="sieve.models.forward"):
        first = forward_features(_NoCache(llama))
        forward_features(_NoCache(llama))
    assert first.cache_argument is None and first.position_ids and first.logits_to_keep
    warnings = [r.message for r in caplog.records if "shared few-shot prefix" in r.message]
    assert len(warnings) == 1


@pytest.mark.parametrize(("family", "options", "window"), [
    ("llama", {}, None),
    ("gpt2", {}, None),
    ("mistral", {"sliding_window": 64}, 64),
    ("mistral", {"sliding_window": None}, None),
    ("qwen2", {"sliding_window": 64, "use_sliding_window": False}, None),
    ("qwen2", {"sliding_window": 64, "use_sliding_window": True, "max_window_layers": 1}, 64),
    ("gemma3_text", {"sliding_window": 64}, 64),
    ("gemma3_text", {"sliding_window": 64, "layer_types": ["full_attention"] * 2}, None),
])
def test_attention_window_is_read_from_the_config(family, options, window):
    from transformers import AutoConfig

    from sieve.models.forward import attention_window

    config = AutoConfig.for_model(family, num_hidden_layers=2, **options)
    assert attention_window(config) == window


def test_evaluating_switches_only_a_training_model(llama, monkeypatch):
    """A training model is in eval mode inside and training again after; a model in eval mode already
    is not walked at all (``train`` is never called)."""
    llama.train()
    with evaluating(llama):
        assert not any(m.training for m in llama.modules())
    assert all(m.training for m in llama.modules())
    llama.eval()
    calls = []
    monkeypatch.setattr(type(llama), "train", lambda self, mode=True: calls.append(mode) or self)
    with evaluating(llama):
        assert not llama.training
    assert calls == [] and not llama.training
