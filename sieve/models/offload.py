"""Models larger than the GPU: decoder blocks streamed from host memory, one at a time.

:class:`BlockStreamer` keeps the first ``resident`` decoder blocks (and everything outside the
blocks: embeddings, final norm, lm_head) on the GPU and the other blocks' tensors in (pinned) host
memory. Just before a streamed block runs, a forward pre-hook points its tensors at one of two
reusable GPU slots; the copy of the *next* streamed block is started on a side stream meanwhile
(double buffering), and after the block ran its tensors point back at host memory. GPU memory is
therefore the resident part plus two blocks, whatever the depth; every computation still runs on
the GPU on the same values, so outputs are bit-identical to a model that fits (tested on the
device).

It composes with :class:`~sieve.prune.pruner.ModelPruner` in ``on_the_fly`` mode: a pruned
weight is computed from the dense original *after* the block's tensors arrived on the GPU. Hooks
hold the tensor objects, not names, so a parametrisation moving a weight under
``parametrizations.weight.original`` does not break them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class _Streamed:
    block: nn.Module
    tensors: list[torch.Tensor]  # parameters and buffers, in a fixed order
    host: list[torch.Tensor]  # their host copies (pinned when a GPU is present)


class BlockStreamer:
    """Stream ``blocks[resident:]`` through two GPU slots; see the module docstring."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, device: torch.device | str, resident: int) -> None:
        self.device = torch.device(device)
        self.resident = max(0, min(resident, len(blocks)))
        block_ids = {id(b) for b in blocks}
        for name, module in model.named_children():
            if id(module) not in block_ids:
                self._to_device_except(module, block_ids)
        for block in blocks[: self.resident]:
            block.to(self.device)
        pin = self.device.type == "cuda"
        self.streamed: list[_Streamed] = []
        for block in blocks[self.resident:]:
            tensors = [t for t in _tensors(block)]
            host = []
            for t in tensors:
                h = t.data.to("cpu")
                h = h.pin_memory() if pin else h.clone()
                t.data = h
                host.append(h)
            self.streamed.append(_Streamed(block, tensors, host))
        shapes = {tuple((tuple(h.shape), h.dtype) for h in s.host) for s in self.streamed}
        if len(shapes) > 1:
            from sieve.errors import SieveError

            raise SieveError("the streamed decoder blocks differ in their tensors' shapes; streaming needs uniform blocks")
        self.slots = [[torch.empty_like(h, device=self.device) for h in self.streamed[0].host]
                      for _ in range(2)] if self.streamed else []
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ready: dict[int, object] = {}
        self.free: list[object | None] = [None, None]  # event: the slot's last user finished
        self._handles = []
        for index, item in enumerate(self.streamed):
            self._handles.append(item.block.register_forward_pre_hook(self._before(index)))
            self._handles.append(item.block.register_forward_hook(self._after(index)))
        self.bytes_streamed = sum(h.numel() * h.element_size() for s in self.streamed for h in s.host)
        log.info("streaming %d of %d decoder blocks (%.1f GiB) from host memory through 2 GPU slots",
                 len(self.streamed), len(blocks), self.bytes_streamed / 2**30)

    def _to_device_except(self, module: nn.Module, skip: set[int]) -> None:
        if any(id(m) in skip for m in module.modules()):
            for child in module.children():
                if id(child) not in skip:
                    self._to_device_except(child, skip)
            for name, p in module.named_parameters(recurse=False):
                p.data = p.data.to(self.device)
            for name, b in module.named_buffers(recurse=False):
                b.data = b.data.to(self.device)
        else:
            module.to(self.device)

    def _copy(self, index: int) -> None:
        """Start copying streamed block ``index`` into slot ``index % 2``."""
        slot = self.slots[index % 2]
        host = self.streamed[index].host
        if self.copy_stream is None:
            for dst, src in zip(slot, host):
                dst.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            if self.free[index % 2] is not None:
                self.copy_stream.wait_event(self.free[index % 2])
            for dst, src in zip(slot, host):
                dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.ready[index] = event

    def _before(self, index: int):
        def hook(module, args):
            if index not in self.ready:  # first streamed block of a forward: nothing prefetched it
                self._copy(index)
            event = self.ready.pop(index, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            for t, buffer in zip(self.streamed[index].tensors, self.slots[index % 2]):
                t.data = buffer
            if index + 1 < len(self.streamed):
                self._copy(index + 1)  # overlaps this block's compute

        return hook

    def _after(self, index: int):
        def hook(module, args, output):
            if self.copy_stream is not None:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self.free[index % 2] = event
            for t, h in zip(self.streamed[index].tensors, self.streamed[index].host):
                t.data = h

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def block_bytes(block: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(block))


def resident_blocks(model: nn.Module, blocks: nn.ModuleList, budget_bytes: int) -> int:
    """How many leading blocks fit ``budget_bytes`` of GPU memory next to everything outside the
    blocks and the two streaming slots."""
    block_ids = {id(t) for b in blocks for t in _tensors(b)}
    outside = sum(t.numel() * t.element_size() for t in _tensors(model) if id(t) not in block_ids)
    per_block = block_bytes(blocks[0])
    spare = budget_bytes - outside - 2 * per_block
    return max(0, min(len(blocks), spare // per_block)) if per_block else len(blocks)
