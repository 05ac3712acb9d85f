"""Replaying a fixed sequence of kernels as one CUDA graph (``torch.cuda.CUDAGraph``).

A graph replays the kernels its capture launched, on the same memory: inputs are read from where
they were at capture time, so a caller changes inputs by writing into those tensors (weights written
in place, an index buffer refilled) — never by rebinding them. Used for a search's scoring
(:mod:`sieve.metrics.scorer`) and its in-place weight writes (:mod:`sieve.prune.pruner`), whose
Python and launch overhead is most of a small model's time per candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CapturedRun:
    """``fn()`` captured as one CUDA graph; calling replays it and returns the same output tensors,
    now holding the new values. ``fn`` must only launch kernels (no host synchronisation)."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, ...]], device: torch.device, pool=None) -> None:
        stream = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            fn()  # warm-up outside the capture: lazy initialisation (cuBLAS workspaces, compiled kernels)
        stream.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn()

    def __call__(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.outputs
