"""How a plan's sequences are laid out into forwards, and what each layout costs, in one currency:
tokens of a dense forward.

**Length buckets**: sequences sorted longest first and cut into runs of at most ``batch_size`` rows,
each padded to its first (longest) one; the cut minimises padded tokens plus a fixed cost ``F`` per
forward (:func:`bucket_bounds`; one batch of 256 few-shot reviews pads 7.4 k real suffix tokens to
14 k). ``F`` is what one more forward costs beyond its tokens (:func:`forward_cost_tokens`).

**Packed rows**: buckets still pad every row of a bucket to its longest one — 1.3× the real tokens on
a 32-review stage, in two forwards. A large model's forward is compute-bound, so padding costs its
full price there. A *packed* row puts sequences one after another; a 4-D additive attention mask lets
each token see the columns before the row (a shared prefix's cache) and the earlier tokens of its own
sequence only, and explicit ``position_ids`` restart at every sequence, so each sequence is scored as
if it ran alone, up to rounding.

What packing costs instead is attention: an explicit mask keeps SDPA on kernels that compute every
(query, key) pair of the row, used or not. Per pair that is ``4 · d · L`` FLOPs (``QKᵀ`` and ``PV``,
hidden size ``d``, ``L`` layers) against ``2 · P`` per token of a dense forward of ``P`` parameters,
i.e. ``2dL / P`` dense tokens per pair (:func:`pair_cost`): 3.3e-5 for an 8B Llama, 2.6e-4 for
SmolLM2-135M. :func:`pack_rows` chooses the number of rows minimising

    Σ_rows (tokens_r + F + pair_cost · tokens_r · (context + tokens_r)),

``F`` being the same fixed cost length buckets are cut by, so :func:`packed_layout` can compare the
two layouts and take the cheaper.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sieve.errors import SieveError
from sieve.models.batched import parameter_count
from sieve.models.forward import ForwardFeatures

ForwardCost = int | Literal["auto"] | None
#: ``"auto"``: packed rows where cheaper than length buckets; ``True``: packed rows (an error where the
#: model cannot run them); ``False``: length buckets only
PackingChoice = bool | Literal["auto"]


def forward_cost_tokens(model: torch.nn.Module) -> int:
    """A forward's fixed cost in tokens of a dense forward: what one more length bucket must save in
    padding. It is a few milliseconds at both ends of the scale — launching a small model's kernels,
    streaming a large model's weights once — i.e. ``≈ 2^39 / parameters`` tokens (SmolLM2-135M runs
    ≈ 610 k tok/s on an H100, a random 8B Llama ≈ 35 k tok/s), clamped to ``[128, 1024]``; parameters
    as one candidate sees them (:func:`~sieve.models.batched.parameter_count`)."""
    params = parameter_count(model)
    return int(min(1024, max(128, 2**39 // max(params, 1))))


def bucket_bounds(lengths: Sequence[int], batch_size: int, forward_cost: int | None = 1024) -> list[tuple[int, int]]:
    """Batches ``[start, stop)`` over ``lengths`` sorted longest first: at most ``batch_size`` rows each.

    With ``forward_cost`` the batches are *length buckets*: the partition into consecutive runs that
    minimises ``Σ_b (rows_b · width_b + forward_cost)`` — padded tokens plus the fixed cost of each
    forward, ``width_b`` being the first (longest) row of run ``b`` — found exactly by dynamic
    programming, ``O(n · batch_size)``. Without it, plain slices of ``batch_size`` rows.
    """
    n = len(lengths)
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("bucket_bounds needs lengths sorted longest first")
    if forward_cost is None or n == 0:
        return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    width = np.asarray(lengths, dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for stop in range(1, n + 1):
        starts = np.arange(max(0, stop - batch_size), stop)
        cost = best[starts] + (stop - starts) * width[starts] + forward_cost
        k = int(np.argmin(cost))
        best[stop], cut[stop] = cost[k], starts[k]
    bounds, stop = [], n
    while stop > 0:
        bounds.append((int(cut[stop]), stop))
        stop = int(cut[stop])
    return bounds[::-1]


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


@dataclass(frozen=True)
class PackedLayout:
    """A packed layout: the sequences of each row (indices into the lengths laid out), and whether each
    row starts with the shared prefix (``inline``) instead of reading its cache from one prefix forward."""

    members: tuple[tuple[int, ...], ...]
    inline: bool


def packed_layout(model: torch.nn.Module, features: ForwardFeatures, lengths: Sequence[int],
                  bounds: Sequence[tuple[int, int]], packing: PackingChoice, forward_cost: int | None,
                  batch_size: int, prefix: int) -> PackedLayout | None:
    """Packed rows for sequences of ``lengths`` past a shared ``prefix`` (longest first, as
    :func:`bucket_bounds` cuts them), or ``None`` for length buckets: with ``packing="auto"`` where
    packing costs less than the buckets ``bounds`` by the same model (tokens run, padding included, a
    fixed cost per forward, every attended pair), with ``True`` always — or one error naming why the
    model cannot. A shared prefix either runs once and every row reads its cache (one more forward) or
    opens every row (``prefix`` more tokens per row), whichever costs less."""
    if packing is False or not lengths or (packing == "auto" and forward_cost is None):
        return None
    pair = pair_cost(model)
    window = features.attention_window
    why = None
    if not features.packed_rows:
        why = "its forward does not honour a 4-D attention mask with logits_to_keep indices (see the probe's warning)"
    elif pair is None:
        why = "its config names no hidden size or layer count to weigh attention by"
    elif window is not None and max(lengths) + prefix > window:
        why = f"a sequence is longer than its {window}-token sliding attention window, which a 4-D mask does not apply"
    if why is not None:
        if packing is True:
            raise SieveError(f"packed rows: {why}")
        return None
    fixed = forward_cost or 0
    cap = batch_size * max(lengths)
    context = 1 + prefix if prefix else 0
    prefix_forward = context + fixed + pair * context * context if prefix else 0.0
    cached = pack_rows(lengths, fixed, pair, context, max_tokens=cap)
    layouts = [(cached.cost + prefix_forward, PackedLayout(cached.rows, False))]
    if prefix:
        inline = pack_rows(lengths, fixed, pair, max_tokens=cap + prefix, lead=prefix)
        layouts.append((inline.cost, PackedLayout(inline.rows, True)))
    cost, rows = min(layouts, key=lambda layout: layout[0])
    buckets = prefix_forward + sum(
        (stop - start) * (lengths[start] + pair * lengths[start] * (context + lengths[start])) + fixed
        for start, stop in bounds)
    return rows if packing is True or cost < buckets else None
