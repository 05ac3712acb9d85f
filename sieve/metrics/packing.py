"""Packed rows: several scoring sequences side by side in one row of a forward, none padded.

Length buckets (:func:`sieve.metrics.loglik.bucket_bounds`) still pad every row of a bucket to its
longest one — 1.3× the real tokens on a 32-review stage, in two forwards. A large model's forward is
compute-bound, so padding costs its full price there. A *packed* row puts sequences one after
another; a 4-D additive attention mask lets each token see the columns before the row (a shared
prefix's cache) and the earlier tokens of its own sequence only, and explicit ``position_ids``
restart at every sequence, so each sequence is scored as if it ran alone, up to rounding.

What packing costs instead is attention: an explicit mask keeps SDPA on kernels that compute every
(query, key) pair of the row, used or not. Per pair that is ``4 · d · L`` FLOPs (``QKᵀ`` and ``PV``,
hidden size ``d``, ``L`` layers) against ``2 · P`` per token of a dense forward of ``P`` parameters,
i.e. ``2dL / P`` dense tokens per pair (:func:`pair_cost`): 3.3e-5 for an 8B Llama, 2.6e-4 for
SmolLM2-135M. :func:`pack_rows` chooses the number of rows minimising

    Σ_rows (tokens_r + F + pair_cost · tokens_r · (context + tokens_r)),

``F`` being a forward's fixed cost in tokens, the same model length buckets are cut by, so the plan
can compare the two layouts in one currency and take the cheaper.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sieve.models.batched import parameter_count


def pair_cost(model: torch.nn.Module) -> float | None:
    """``2 · d · L / P``: one attended (query, key) pair in tokens of a dense forward (see the module
    docstring); ``None`` when the config names no hidden size or layer count."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    params = parameter_count(model)
    if not isinstance(hidden, int) or not isinstance(layers, int) or params == 0:
        return None
    return 2.0 * hidden * layers / params


@dataclass(frozen=True)
class Packing:
    """Which sequences share each row (indices into the lengths packed) and the layout's cost."""

    rows: tuple[tuple[int, ...], ...]
    cost: float


def pack_rows(lengths: Sequence[int], forward_cost: float, pair: float, context: int = 0,
              max_tokens: int | None = None, lead: int = 0) -> Packing:
    """The cheapest packing of sequences of ``lengths`` into rows, one forward each.

    For every row count ``n`` the sequences go longest first to the least-filled row (LPT, which
    keeps rows within one sequence of each other); the ``n`` of the lowest cost (module docstring)
    wins, the scan stopping where ``n`` forwards' fixed costs alone reach the best cost.
    ``context``: key columns every row sees before its own (a shared prefix's cache); ``lead``:
    tokens every row starts with (the shared prefix run inside the row instead), counted in each
    row's tokens; ``max_tokens``: no row longer (a memory bound; at least the longest sequence plus
    ``lead``). Within a row, sequences keep the order of their indices.
    """
    if not lengths:
        return Packing((), 0.0)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    total = sum(lengths)
    cap = max(max(lengths), (max_tokens or total + lead) - lead)
    best: Packing | None = None
    for n in range(max(1, -(-total // cap)), len(lengths) + 1):
        heap = [(0, r) for r in range(n)]
        members: list[list[int]] = [[] for _ in range(n)]
        for i in order:
            load, r = heapq.heappop(heap)
            members[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        loads = [sum(lengths[i] for i in row) for row in members]
        if best is not None and total + n * (forward_cost + lead) >= best.cost:
            break  # a lower bound of every cost from n rows on
        if max(loads) > cap:
            continue
        cost = sum(lead + t + forward_cost + pair * (lead + t) * (context + lead + t) for t in loads)
        if best is None or cost < best.cost:  # ties keep fewer rows
            best = Packing(tuple(tuple(sorted(row)) for row in members), cost)
    assert best is not None
    return best
