"""Collecting :class:`~sieve.stats.channel.CalibrationStats` with forward hooks.

:func:`collect_stats` runs the whole model over the batches once; :func:`collect_stats_sequential`
runs one decoder block at a time over all batches (optionally moving only that block to a device),
for models that do not fit. Both give the same statistics up to float rounding (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from sieve.models.matrix import Matrix
from sieve.stats.channel import CalibrationStats, ChannelStats

log = logging.getLogger(__name__)


def expert_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor, tap) -> torch.Tensor:
    """The eager forward of a 3-D experts module (``gate_up_proj``: E × 2I × H, concatenated
    [gate; up]; ``down_proj``: E × H × I) — Mixtral's, Qwen2-MoE's and Qwen3-MoE's — calling
    ``tap(expert, tensor name, inputs, token indices)`` with each expert's inputs (the tokens
    routed to it), which no module hook can see."""
    final = torch.zeros_like(hidden_states)
    n = experts.num_experts
    expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=n + 1).permute(2, 1, 0)
    for expert in torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist():
        if expert == n:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert])
        state = hidden_states[token_idx]
        tap(expert, "gate_up_proj", state, token_idx)
        gate, up = torch.nn.functional.linear(state, experts.gate_up_proj[expert]).chunk(2, dim=-1)
        inner = experts.act_fn(gate) * up
        tap(expert, "down_proj", inner, token_idx)
        out = torch.nn.functional.linear(inner, experts.down_proj[expert]) * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final


class _StatsHooks:
    """Forward pre-hooks accumulating :class:`ChannelStats`; ``token_mask`` drops padding.

    Matrices that read the very same input tensor (q/k/v after one norm, gate/up) share one
    :class:`ChannelStats` object: it is accumulated once, and SparseGPT's ``XᵀX`` is held once
    (4 instead of 7 Hessians per Llama block). Sharing is detected on the first batch, from the
    identity of the hooks' input tensors, so no architecture names are involved. An expert's
    matrices see only the tokens routed to that expert: their experts module runs
    :func:`expert_forward` while statistics are collected.
    """

    def __init__(self, matrices: Sequence[Matrix], hessian: bool) -> None:
        self.hessian = hessian
        self.matrices = {m.name: m for m in matrices}
        self.stats: dict[str, ChannelStats] = {}
        self.aliases: dict[str, str] = {}
        self.token_mask: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, str] | None = None
        self._handles = [m.module.register_forward_pre_hook(self._hook(m.name)) for m in matrices if m.expert is None]
        self._tapped: list[nn.Module] = []
        by_module: dict[int, dict[tuple[int, str], str]] = {}
        modules: dict[int, nn.Module] = {}
        for m in matrices:
            if m.expert is not None:
                by_module.setdefault(id(m.module), {})[(m.expert, m.param)] = m.name
                modules[id(m.module)] = m.module
        for key, names in by_module.items():
            self._tap(modules[key], names)

    def _tap(self, experts: nn.Module, names: dict[tuple[int, str], str]) -> None:
        def tap(expert: int, param: str, x: torch.Tensor, token_idx: torch.Tensor) -> None:
            name = names.get((expert, param))
            if name is None:
                return
            if self.token_mask is not None:
                x = x[self.token_mask.reshape(-1)[token_idx]]
            self._accumulate(self.stats.setdefault(name, self._new(name)), x)

        experts.forward = lambda h, idx, w: expert_forward(experts, h, idx, w, tap)
        self._tapped.append(experts)

    def _new(self, name: str) -> ChannelStats:
        m = self.matrices[name]
        cols = m.shape[1]
        return ChannelStats(
            sq_sum=torch.zeros(cols, dtype=torch.float64, device=m.weight.device),
            hessian=torch.zeros(cols, cols, dtype=torch.float32, device=m.weight.device) if self.hessian else None,
        )

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            raw = args[0]
            if name not in self.stats:
                last = self._last
                if last is not None and last[0] is raw:
                    self.aliases[name] = last[1]
                    self.stats[name] = self.stats[last[1]]
                else:
                    self.stats[name] = self._new(name)
            root = self.aliases.get(name, name)
            self._last = (raw, root)
            if root != name:
                return
            x = raw.detach()
            if self.token_mask is not None and x.dim() == 3:
                x = x[self.token_mask]
            self._accumulate(self.stats[name], x)

        return hook

    @staticmethod
    def _accumulate(stats: ChannelStats, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        stats.sq_sum += x.double().pow(2).sum(0).to(stats.sq_sum.device)
        stats.n_tokens += x.shape[0]
        if stats.hessian is not None:
            xf = x.float()
            stats.hessian += (xf.t() @ xf).to(stats.hessian.device)

    def result(self, source: str, fingerprint: str) -> CalibrationStats:
        """All matrices' statistics (CPU), in the matrices' order; unseen ones stay zero."""
        self._last = None
        for name in self.matrices:
            if name not in self.stats:
                self.stats[name] = self._new(name)
        for name, stats in self.stats.items():
            if name not in self.aliases:
                stats.sq_sum = stats.sq_sum.cpu()
                if stats.hessian is not None:
                    stats.hessian = stats.hessian.cpu()
        per_matrix = {name: self.stats[name] for name in self.matrices}
        log.info("collected %s statistics for %d matrices (%d share an input)", source, len(per_matrix), len(self.aliases))
        unrouted = [name for name, m in self.matrices.items() if m.expert is not None and per_matrix[name].n_tokens == 0]
        if unrouted:
            log.warning("%d expert matrices received no %s calibration token (their scores rest on weights alone), "
                        "e.g. %s", len(unrouted), source, ", ".join(unrouted[:3]))
        return CalibrationStats(source=source, per_matrix=per_matrix, fingerprint=fingerprint, aliases=self.aliases)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for experts in self._tapped:
            del experts.forward  # the class's own forward again


@torch.inference_mode()
def collect_stats(
    model: nn.Module,
    matrices: Sequence[Matrix],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    *,
    source: str,
    hessian: bool = False,
    fingerprint: str = "",
) -> CalibrationStats:
    """One forward pass over ``batches`` of ``(input_ids, attention_mask | None)``.

    Hooks read each matrix's input; padding positions (``attention_mask == 0``) are excluded so a
    padded batch gives the same statistics as its unpadded rows.
    """
    hooks = _StatsHooks(matrices, hessian)
    device = next(model.parameters()).device
    try:
        for input_ids, attention_mask in batches:
            input_ids = input_ids.to(device)
            if attention_mask is not None:
                attention_mask = attention_mask.to(device)
                hooks.token_mask = attention_mask.bool()
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        hooks.remove()
    return hooks.result(source, fingerprint)


class _Captured(Exception):
    """Raised by the last block's recording stub once every block's inputs are known."""


class _Hidden(tuple):
    """What a recording stub returns: a 1-tuple of the hidden states, so that both ``h = layer(h)``
    (transformers 5) and ``h = layer(h)[0]`` (4.x) hand the next stub something it can unwrap."""


BlockInputs = tuple[tuple, dict]  # a block's positional arguments after the hidden states, and its keywords


def _record_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, list[BlockInputs]]:
    """The first block's hidden states and the other inputs of *every* block, for one batch.

    For one model call each block's ``forward`` is a stub that records its inputs and passes the
    hidden states on; the last stub stops the call, so only the embeddings run. Blocks need not get
    the same inputs: Gemma 2/3 hand their full-attention layers another mask and other rotary
    embeddings than their sliding-window layers, so replaying the first block's inputs to every block
    would give wrong statistics (tested).
    """
    first: list[torch.Tensor] = []
    inputs: list[BlockInputs] = []

    def stub(index: int):
        def forward(*args, **kwargs):
            hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
            hidden = hidden[0] if isinstance(hidden, _Hidden) else hidden
            if index == 0:
                first.append(hidden)
            inputs.append((rest, dict(kwargs)))
            if index == len(blocks) - 1:
                raise _Captured
            return _Hidden((hidden,))
        return forward

    saved = [block.__dict__.get("forward") for block in blocks]  # e.g. an accelerate hook's wrapper
    for index, block in enumerate(blocks):
        block.forward = stub(index)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Captured:
        pass
    finally:
        for block, original in zip(blocks, saved, strict=True):
            if original is None:
                del block.forward
            else:
                block.forward = original
    if len(inputs) != len(blocks):
        raise RuntimeError(f"{type(model).__name__} ran {len(inputs)} of its {len(blocks)} decoder blocks")
    return first[0], inputs


def _to(obj, device: torch.device | None):
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.inference_mode()
def collect_stats_sequential(
    model: nn.Module,
    blocks: nn.ModuleList,
    matrices: Sequence[Matrix],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    *,
    source: str,
    hessian: bool = False,
    fingerprint: str = "",
    device: torch.device | str | None = None,
) -> CalibrationStats:
    """The same statistics, computed one decoder block at a time (for models that do not fit).

    The inputs of every block are recorded for every batch (:func:`_record_block_inputs`: only the
    embeddings run), then each block runs over all batches with its own recorded inputs and hands
    its outputs to the next. With ``device`` set, only the running block is moved there (the rest
    of the model stays where it is, e.g. on the CPU), so GPU memory is one block plus the
    calibration activations. On a dense model the result equals :func:`collect_stats` up to float
    rounding (tested, Gemma 3 included).
    """
    home = next(model.parameters()).device
    captured: list[tuple[torch.Tensor, list[BlockInputs], torch.Tensor | None]] = []
    for input_ids, attention_mask in batches:
        hidden, inputs = _record_block_inputs(
            model, blocks, input_ids.to(home), None if attention_mask is None else attention_mask.to(home))
        captured.append((hidden, inputs, None if attention_mask is None else attention_mask.bool()))
    hooks = _StatsHooks(matrices, hessian)
    try:
        for index, block in enumerate(blocks):
            if device is not None:
                block.to(device)
            for b, (hidden, inputs, mask) in enumerate(captured):
                hooks.token_mask = _to(mask, device)
                rest, kwargs = inputs[index]
                out = block(_to(hidden, device), *_to(rest, device), **_to(kwargs, device))
                captured[b] = ((out[0] if isinstance(out, tuple) else out).to(hidden.device), inputs, mask)
            if device is not None:
                block.to(home)
    finally:
        hooks.remove()
    return hooks.result(source, fingerprint)
