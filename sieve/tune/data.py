"""Training batches: the task's calibration (training) split as causal-LM examples, and general text.

An example is its context followed by its *gold* continuation, tokenised exactly as sieve's scorer
and lm-eval's HFLM read it (:func:`~sieve.scoring.encode.encode_task`); the model input is
``(ctx + cont)[-(max_length + 1):][:-1]`` and the loss falls on the continuation's tokens only —
what the validation metric (the gold continuation's NLL) measures, and nothing of the prompt::

    position t predicts token t + 1;  labels_t = token_{t+1} for the last len(cont) positions, else −100

Batches are right-padded (``attention_mask`` 0, label −100). The order is a pure function of the
seed and the step (:func:`batch_indices`: one seeded permutation per epoch, read in slices), so a
resumed run draws the same batches without saving a data-loader state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sieve.data.splits import TaskExample
from sieve.scoring.encode import EncodedTask, encode_task

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, IGNORE outside the continuations

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def target_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def training_rows(encoded: EncodedTask) -> list[tuple[tuple[int, ...], int]]:
    """Per example ``(full tokens, continuation length)``: ``full = (ctx + gold)[-(max_length + 1):]``."""
    rows = []
    for ctx, conts, gold in zip(encoded.contexts, encoded.continuations, encoded.golds, strict=True):
        cont = conts[gold]
        full = tuple((list(ctx) + list(cont))[-(encoded.max_length + 1):])
        rows.append((full, min(len(cont), len(full) - 1)))
    return rows


def collate(rows: Sequence[tuple[tuple[int, ...], int]], pad_id: int) -> Batch:
    """Right-padded inputs ``full[:-1]`` with labels ``full[1:]`` on the continuation's positions."""
    width = max(len(full) - 1 for full, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (full, n_cont) in enumerate(rows):
        n = len(full) - 1
        ids[i, :n] = torch.tensor(full[:-1])
        mask[i, :n] = 1
        labels[i, n - n_cont:n] = torch.tensor(full[len(full) - n_cont:])
    return Batch(ids, mask, labels)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of training step ``step`` (1-based): the stream of per-epoch permutations
    ``permutation_e = default_rng([seed, e]).permutation(n)`` cut into consecutive batches."""
    start = (step - 1) * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(int(i) for i in perm[offset:offset + batch_size - len(out)])
    return out


@dataclass(frozen=True)
class TrainingData:
    """The encoded training examples and, for distillation, a pool of general-text blocks."""

    rows: tuple[tuple[tuple[int, ...], int], ...]
    pad_id: int
    general: torch.Tensor | None = None  # (n, block_len) token ids

    @classmethod
    def build(cls, examples: Sequence[TaskExample], tokenizer, max_length: int,
              general: torch.Tensor | None = None) -> TrainingData:
        encoded = encode_task(examples, tokenizer, max_length)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(tuple(training_rows(encoded)), int(pad or 0), general)

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return collate([self.rows[i] for i in batch_indices(len(self.rows), batch_size, seed, step)], self.pad_id)

    def general_batch(self, step: int, size: int) -> torch.Tensor | None:
        """``size`` general blocks of step ``step``, cycling through the pool in order."""
        if self.general is None:
            return None
        n = self.general.shape[0]
        return self.general[[((step - 1) * size + j) % n for j in range(size)]]


def examples_digest(*splits: Sequence[TaskExample]) -> str:
    """Content hash of the examples tuning reads (training and validation; never the test split)."""
    body = [[[ex.context, list(ex.continuations), ex.gold] for ex in split] for split in splits]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]
