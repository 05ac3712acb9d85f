"""General-text token blocks: EOS between texts, no padding, BOS first when the tokenizer adds one;
the corpus file shapes that are read (the refused ones are rows of tests/test_bad_input.py)."""

import json

import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from sieve.data.general import leading_bos, load_texts, token_blocks
from sieve.errors import SieveError

TEXTS = ["the film was warm and funny", "a dull slow story", "great music", "the plot is weak"] * 3


@pytest.fixture
def bos_tokenizer(tokenizer):
    """The shared tiny tokenizer, prepending ``<bos>`` to every encoding (Gemma, Llama 3 style)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.add_special_tokens(["<bos>"])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", backend.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")


def stream(tokenizer) -> list[int]:
    ids = []
    for text in TEXTS:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


def test_blocks_cut_the_text_stream_with_eos_between_texts(tokenizer):
    assert leading_bos(tokenizer) is None
    blocks = token_blocks(TEXTS, tokenizer, 3, 8)
    assert blocks.shape == (3, 8) and blocks.dtype == torch.long
    assert blocks.flatten().tolist() == stream(tokenizer)[:24]


def test_a_tokenizer_that_adds_bos_gets_it_first_in_every_block(bos_tokenizer):
    bos = bos_tokenizer.bos_token_id
    assert leading_bos(bos_tokenizer) == bos
    blocks = token_blocks(TEXTS, bos_tokenizer, 3, 8)
    assert blocks.shape == (3, 8)
    assert blocks[:, 0].tolist() == [bos] * 3
    assert blocks[:, 1:].flatten().tolist() == stream(bos_tokenizer)[:21]  # 7 text tokens each, in order
    with pytest.raises(SieveError, match="no room for text after the BOS"):
        token_blocks(TEXTS, bos_tokenizer, 1, 1)


def test_too_little_text(tokenizer):
    one = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert token_blocks(TEXTS[:1], tokenizer, 50, 4).shape == (len(one) // 4, 4)  # fewer than asked
    with pytest.raises(SieveError, match="not enough general text"):
        token_blocks(["fun"], tokenizer, 1, 64)


@pytest.mark.parametrize("name, content", [
    ("c.txt", "first text\n\n  second text  \n\n\n\nthird text"),
    ("c.jsonl", '{"text": "first text"}\n\n{"text": "second text", "id": 2}\n{"text": "third text"}\n'),
    ("c.json", json.dumps(["first text", "second text", "third text"])),
    ("c.json", json.dumps([{"text": "first text"}, {"text": "second text"}, {"extract": "third text"}])),
    ("c.json", json.dumps({"a": {"extract": "first text"}, "b": {"extract": "second text"}, "c": "third text"})),
])
def test_corpus_file_shapes(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert load_texts(str(path)) == ["first text", "second text", "third text"]
