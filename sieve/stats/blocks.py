"""How much each decoder block changes the hidden state: the statistics behind the depth-pruning
baselines (which whole blocks to remove, :mod:`sieve.prune.depth_choice`).

With ``x_l`` the hidden state entering block ``l`` (so ``x_{l+1}`` is the one leaving it, and
``x_L`` leaves the last of ``L`` blocks, before the final norm), over real (``attention_mask = 1``)
tokens only:

* **block influence** (ShortGPT, arXiv 2403.03853): ``BI_l = 1 − mean_t cos(x_{l,t}, x_{l+1,t})``,
  the mean over every real token ``t`` of every sequence. A block that barely turns its input
  (``BI ≈ 0``) is the cheapest to drop;
* **angular distance of a run** (Gromov et al., arXiv 2403.17887): for the ``n`` contiguous blocks
  ``l … l+n−1``, ``D(l, n) = mean_s arccos(cos(x_{l,s}, x_{l+n,s})) / π`` at each sequence ``s``'s
  *last* real token, in ``[0, 1]``. A run whose output points where its input did is the cheapest
  contiguous run to drop.

One pass gives both. Forward hooks on the blocks see each block's input and output; the per-token
cosines are summed as they come, and the ``L + 1`` last-token states of every sequence of a batch
(``x_0 … x_L``) give that batch's ``D(l, n)`` for every run at once. Everything is summed in
float64; cosines are clamped into ``[−1, 1]`` before ``arccos`` (rounding can leave ``|cos|``
a hair above 1, where ``arccos`` is NaN).

:func:`token_cosines`, :func:`last_token_index` and :func:`angular_sums` are the pure tensor
rules; :func:`block_similarity` is the hooked shell around them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sieve.errors import SieveError
from sieve.models.depth import decoder_blocks

logger = logging.getLogger(__name__)

#: norms below this count as zero: the cosine of a zero vector is taken as 0, not NaN
TINY_NORM = 1e-300


@dataclass(frozen=True, eq=False)
class BlockSimilarity:
    """Per-block statistics of one calibration pass (arrays are float64 and read-only).

    ``influence[l]`` is ShortGPT's ``BI_l`` of block ``l`` (shape ``(L,)``); ``angular[l, n]`` is
    Gromov et al.'s ``D(l, n)`` of the run ``l … l+n−1`` (shape ``(L, L+1)``): ``0`` for the
    empty run ``n = 0``, NaN where the run would pass the last block (``l + n > L``). ``tokens`` is
    the number of real tokens behind ``influence``, ``sequences`` the number of sequences (one last
    token each) behind ``angular``.
    """

    influence: np.ndarray
    angular: np.ndarray
    tokens: int
    sequences: int

    def __post_init__(self) -> None:
        for name in ("influence", "angular"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        count = self.influence.shape[0]
        if self.influence.shape != (count,) or self.angular.shape != (count, count + 1):
            raise ValueError(f"influence {self.influence.shape} and angular {self.angular.shape} do not describe "
                             "the same number of blocks (expected (L,) and (L, L+1))")

    @property
    def blocks(self) -> int:
        """``L``, the number of decoder blocks measured."""
        return self.influence.shape[0]

    @property
    def cosine(self) -> np.ndarray:
        """``mean_t cos(x_l, x_{l+1})`` per block, ``1 − influence``."""
        return 1.0 - self.influence


def cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos(x, y) = x·y / (‖x‖ ‖y‖)`` along the last axis, in float64, clamped into ``[−1, 1]``;
    0 where either vector is zero."""
    x, y = x.double(), y.double()
    dot = (x * y).sum(-1)
    norms = x.norm(dim=-1) * y.norm(dim=-1)
    return torch.where(norms > TINY_NORM, dot / norms.clamp_min(TINY_NORM), torch.zeros_like(dot)).clamp(-1.0, 1.0)


def token_cosines(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """``(Σ_t cos(x_t, y_t), number of tokens)`` over the real tokens of a ``(batch, seq, hidden)``
    pair (``mask``: ``(batch, seq)``, nonzero = real; ``None`` = every token is real)."""
    if mask is not None:
        keep = mask.to(x.device).bool()
        x, y = x[keep], y[keep]
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return float(cosines(x, y).sum()), x.shape[0]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token, ``max {t : mask[b, t] ≠ 0}`` (right, left or no
    padding alike); ``−1`` for a row without any real token."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(-1)


def angular_sums(states: torch.Tensor) -> torch.Tensor:
    """``S[l, n] = Σ_s arccos(cos(x_{l,s}, x_{l+n,s})) / π`` for ``states`` ``(sequences, L+1,
    hidden)`` (``x_0 … x_L`` of each sequence): shape ``(L, L+1)``, float64, NaN where
    ``l + n > L``. ``S[l, 0] = 0``: the empty run changes nothing."""
    count = states.shape[1] - 1
    states = states.double()
    out = torch.full((count, count + 1), math.nan, dtype=torch.float64, device=states.device)
    out[:, 0] = 0.0  # exactly: arccos(cos(x, x)) is √(2ε) ≈ 1e-8, not 0, after rounding
    for n in range(1, count + 1):
        runs = min(count, count + 1 - n)  # starts l = 0 … L−n, and no start past block L−1
        cos = cosines(states[:, :runs], states[:, n : n + runs])
        out[:runs, n] = (torch.arccos(cos) / math.pi).sum(0)
    return out


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder block was called with: its first positional argument, or the
    ``hidden_states`` keyword."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    raise SieveError("a decoder block was called without hidden states (neither a first positional tensor "
                     "nor hidden_states=): cannot measure its block similarity")


def block_output(output) -> torch.Tensor:
    """The hidden states a decoder block returned: the tensor itself (transformers 5) or the first
    element of a tuple (transformers 4.x)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise SieveError(f"a decoder block returned {type(output).__name__}, not hidden states")
    return output


class _SimilarityHooks:
    """Forward hooks on every block, summing token cosines and keeping the current batch's
    last-token states ``x_0 … x_L`` (``states[l]`` = input of block ``l``, ``states[L]`` = output
    of the last block)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.count = len(blocks)
        self.cos_sum = [0.0] * self.count
        self.tokens = [0] * self.count
        self.mask: torch.Tensor | None = None
        self.last: torch.Tensor | None = None  # (batch,) last real token, batch rows with one
        self.rows: torch.Tensor | None = None  # the batch rows that have a real token
        self.states: list[torch.Tensor | None] = [None] * (self.count + 1)
        self._handles = [block.register_forward_hook(self._hook(i), with_kwargs=True) for i, block in enumerate(blocks)]

    def start(self, mask: torch.Tensor | None, shape: torch.Size) -> None:
        if mask is None:
            mask = torch.ones(shape, dtype=torch.long)
        last = last_token_index(mask)
        self.mask, self.rows = mask, (last >= 0).nonzero()[:, 0]
        self.last = last[self.rows]
        self.states = [None] * (self.count + 1)

    def _pick(self, h: torch.Tensor) -> torch.Tensor:
        rows, last = self.rows.to(h.device), self.last.to(h.device)
        return h[rows, last].detach().double()

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            x, y = block_input(args, kwargs), block_output(output)
            total, n = token_cosines(x.detach(), y.detach(), self.mask)
            self.cos_sum[index] += total
            self.tokens[index] += n
            self.states[index] = self._pick(x)
            if index == self.count - 1:
                self.states[index + 1] = self._pick(y)

        return hook

    def batch_states(self) -> torch.Tensor:
        """``(sequences, L+1, hidden)`` of the batch just run."""
        missing = sorted({min(i, self.count - 1) for i, s in enumerate(self.states) if s is None})
        if missing:
            raise SieveError(f"decoder blocks {missing} did not run during the forward pass: "
                             "cannot measure block similarity")
        return torch.stack([s.to(self.states[0].device) for s in self.states], dim=1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.inference_mode()
def block_similarity(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    blocks: Sequence[nn.Module] | None = None,
) -> BlockSimilarity:
    """ShortGPT's block influence and Gromov et al.'s run angular distances (module docstring)
    of ``blocks`` (default: the model's decoder blocks, :func:`sieve.models.depth.decoder_blocks`)
    over ``batches`` of ``(input_ids, attention_mask | None)`` on the model's device, in one
    forward pass per batch (``use_cache=False``).

    Padding (``attention_mask = 0``) is excluded from both statistics. The model is called with
    the mask only, not with ``position_ids``: pad on the right, where a causal model's real tokens
    are computed exactly as without padding (left padding would shift a RoPE model's positions).
    """
    blocks = list(decoder_blocks(model) if blocks is None else blocks)
    if not blocks:
        raise SieveError(f"{type(model).__name__} has no decoder blocks to measure")
    count = len(blocks)
    hooks = _SimilarityHooks(blocks)
    angular = torch.zeros(count, count + 1, dtype=torch.float64)
    sequences = 0
    try:
        for input_ids, attention_mask in batches:
            hooks.start(attention_mask, input_ids.shape)
            if len(hooks.rows) == 0:
                continue
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            angular += angular_sums(hooks.batch_states()).cpu()
            sequences += len(hooks.rows)
    finally:
        hooks.remove()
    tokens = hooks.tokens[0]
    if tokens == 0 or sequences == 0:
        raise SieveError("no real tokens to measure block similarity on (no batch, or every attention mask is 0)")
    influence = 1.0 - np.array(hooks.cos_sum) / np.array(hooks.tokens)
    result = BlockSimilarity(influence=influence, angular=(angular / sequences).numpy(), tokens=tokens,
                             sequences=sequences)
    logger.info("block similarity of %d blocks over %d tokens / %d sequences: lowest influence block %d (%.4f)",
                count, tokens, sequences, int(np.argmin(influence)), float(influence.min()))
    return result
