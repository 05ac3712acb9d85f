"""The in-place writer: pruned weights written into the model, from dense copies kept beside it.

Matrices of one shape, dtype and device form a **stack**: their dense copies live in one
``(G, out, in)`` tensor. With ``contiguous`` (what a search uses) the model's own weights of a stack
are the slices of one such tensor too, and a candidate's changed matrices of a stack are masked by
one kernel (:mod:`~sieve.prune.threshold`) that writes straight into the model (no temporary: one
read of the dense copy, one write of the weights) — on CUDA the whole stack by one launch (unchanged
members too: one launch streams a small model's stack faster than the host launches one per changed
member) or, where the changed members are few and large, member by member; elsewhere one pass per
run of consecutive changed members; without ``contiguous`` by one pass per chunk of the stack and a
multi-tensor copy back. Either way a handful of kernel launches per shape instead of several per
matrix, which is what a small model's apply is made of (SmolLM2-135M: 210 matrices, 4 shapes). The
bits are those of the per-matrix pass (the same float32 products and comparisons per element; tested).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from sieve.models.matrix import Matrix
from sieve.primitives.base import DENSE, Level
from sieve.prune.levels import LevelTable, Threshold
from sieve.prune.threshold import threshold_mask, threshold_mask_into

_CHUNK_BYTES = 1 << 28  # the largest masked slice of a stack materialised at once (256 MiB)
#: what a GPU streams in about the host time of one kernel launch (~20 µs at ~3 TB/s): a
#: member written on its own costs at least this much, a whole-stack rewrite streams every member
_LAUNCH_BYTES = 1 << 26


@dataclass
class _Stack:
    """Same-shaped in-place matrices whose dense copies are the slices of one ``(G, out, in)`` tensor."""

    names: list[str]
    dense: torch.Tensor
    factor: torch.Tensor | None  # (G, 1, in) float32: each member's column factor, for mask-only methods
    weights: torch.Tensor | None = None  # (G, out, in): the model's own weights, when they are its slices
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.names)}

    def chunks(self, members: list[int]) -> Iterable[list[int]]:
        per = max(1, _CHUNK_BYTES // (self.dense[0].numel() * self.dense.element_size()))
        for start in range(0, len(members), per):
            yield members[start : start + per]

    def select(self, tensor: torch.Tensor, members: list[int]) -> torch.Tensor:
        """``tensor[members]``, a view where the members are consecutive (no copy)."""
        if _consecutive(members):
            return tensor[members[0] : members[0] + len(members)]
        return tensor.index_select(0, torch.tensor(members, device=tensor.device))


def _consecutive(members: list[int]) -> bool:
    return members == list(range(members[0], members[0] + len(members)))


def _runs(members: list[int]) -> list[list[int]]:
    """Sorted ``members`` split into runs of consecutive indices (each run is one slice of a stack)."""
    runs: list[list[int]] = []
    for i in members:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class InPlaceWriter:
    """Keeps a dense copy of each of ``matrices`` (in ``dense``) and writes their levels into the
    model. ``writes`` counts matrices written through a stack (``stacked``, of them ``direct``
    straight into the model's weights, ``member`` one stack member at a time) and one by one
    (``single``)."""

    def __init__(self, matrices: Sequence[Matrix], exec_device: Mapping[str, torch.device],
                 factor: Mapping[str, torch.Tensor], table: LevelTable, dense: dict[str, torch.Tensor],
                 contiguous: bool) -> None:
        self.by_name = {m.name: m for m in matrices}
        self.exec_device, self.table = exec_device, table
        self.stacks: dict[str, _Stack] = {}  # matrix name -> its stack
        self.writes: Counter[str] = Counter()
        self.whole_stack_devices = {"cuda"}  # where a changed contiguous stack is rewritten whole
        groups: dict[tuple, list[Matrix]] = {}
        for m in matrices:
            w = m.weight
            groups.setdefault((m.shape, w.dtype, str(w.device), str(exec_device[m.name])), []).append(m)
        for (shape, dtype, device, exec_on), members in groups.items():
            if len(members) == 1 or device != exec_on:
                for m in members:
                    dense[m.name] = m.weight.detach().clone()
                continue
            stacked = torch.empty((len(members), *shape), dtype=dtype, device=device)
            for i, m in enumerate(members):
                stacked[i].copy_(m.weight)
                dense[m.name] = stacked[i]
            column_factor = torch.stack([factor[m.name] for m in members]).unsqueeze(1) if factor else None
            stack = _Stack([m.name for m in members], stacked, column_factor)
            if contiguous and all(m.expert is None and not m.transposed for m in members):
                stack.weights = stacked.clone()
                for i, m in enumerate(members):
                    m.module.weight.data = stack.weights[i]
            self.stacks.update({m.name: stack for m in members})
        self.dense = dense

    def _threshold(self, name: str, level: Level) -> Threshold:
        return self.table.threshold(name, level, self.by_name[name].shape[0], self.exec_device[name])

    def write(self, changed: Sequence[Matrix], current: Mapping[str, Level],
              thresholded: Callable[[str, Level], bool], weight_at: Callable[[str], torch.Tensor]) -> None:
        """Write the ``current`` level of each of ``changed`` into the model: contiguous CUDA stacks
        whole or member by member, dense ones by one multi-tensor copy, thresholded ones stack by
        stack, the rest one by one (``weight_at``)."""
        whole = self._whole_stacks(changed, current, thresholded)
        for key, stack in whole.items():
            members = sorted(stack.index[m.name] for m in changed if id(self.stacks.get(m.name)) == key)
            member_bytes = stack.dense[0].numel() * stack.dense.element_size()
            if len(members) * max(member_bytes, _LAUNCH_BYTES) < len(stack.names) * member_bytes:
                self._rewrite(stack, current, members)
                self.writes.update(member=len(members))
            else:
                self._rewrite(stack, current)
        restored, masked, single = [], {}, []
        for m in changed:
            level = current[m.name]
            if m.name in self.stacks and id(self.stacks[m.name]) in whole:
                self.writes.update(direct=1)
            elif level == DENSE:
                restored.append(m)
            elif m.name in self.stacks and thresholded(m.name, level):
                masked.setdefault(id(self.stacks[m.name]), []).append(m)
            else:
                single.append(m)
        if restored:
            torch._foreach_copy_([m.weight for m in restored], [self.dense[m.name] for m in restored])
        for members in masked.values():
            if len(members) == 1:
                single.extend(members)
                continue
            self._mask_members(self.stacks[members[0].name], members, current)
        for m in single:
            m.weight.copy_(weight_at(m.name))
        self.writes.update(stacked=len(changed) - len(single), single=len(single))

    def _mask_members(self, stack: _Stack, members: Sequence[Matrix], current: Mapping[str, Level]) -> None:
        """The thresholded ``members`` of ``stack``: one kernel per run (contiguous: into the model)
        or per chunk (a multi-tensor copy back)."""
        indices = sorted(stack.index[m.name] for m in members)
        for part in _runs(indices) if stack.weights is not None else stack.chunks(indices):
            chosen = [stack.names[i] for i in part]
            t_score = torch.stack([self.table.thresholds[n][current[n].k][0] for n in chosen])
            t_col = torch.stack([self.table.thresholds[n][current[n].k][1] for n in chosen])
            dense = stack.select(stack.dense, part)
            columns = self.table.column_index(dense.shape[-1], dense.device)
            factor = stack.select(stack.factor, part)
            if stack.weights is not None:
                out = stack.weights[part[0] : part[0] + len(part)]
                threshold_mask_into(out, dense, factor, t_score, t_col, columns)
                self.writes.update(direct=len(part))
                continue
            pruned = threshold_mask(dense, factor, t_score, t_col, columns)
            torch._foreach_copy_([self.by_name[n].weight for n in chosen], list(pruned.unbind(0)))

    def _whole_stacks(self, changed: Sequence[Matrix], current: Mapping[str, Level],
                      thresholded: Callable[[str, Level], bool]) -> dict[int, _Stack]:
        """The stacks of ``changed`` written by the threshold kernel alone: contiguous, on CUDA, every
        member dense or thresholded. A stack is rewritten whole (unchanged members too: one launch),
        or member by member where its changed members are few and large enough (a large model
        between similar candidates: fewer bytes streamed)."""
        whole: dict[int, _Stack] = {}
        seen: set[int] = set()
        for m in changed:
            stack = self.stacks.get(m.name)
            if stack is None or id(stack) in seen:
                continue
            seen.add(id(stack))
            if (stack.weights is not None and stack.weights.device.type in self.whole_stack_devices
                    and stack.factor is not None
                    and all(current[n] == DENSE or thresholded(n, current[n]) for n in stack.names)):
                whole[id(stack)] = stack
        return whole

    def _rewrite(self, stack: _Stack, current: Mapping[str, Level], members: Sequence[int] | None = None) -> None:
        """Every member of ``stack`` (or those of ``members``, one at a time) at its current level
        (dense ones through the keep-everything threshold), by the threshold kernel into the model:
        the same elementwise rule, so the same bits either way."""
        columns = self.table.column_index(stack.dense.shape[-1], stack.dense.device)
        if members is None:
            t_score, t_col = zip(*(self._threshold(n, current[n]) for n in stack.names), strict=True)
            threshold_mask_into(stack.weights, stack.dense, stack.factor, torch.stack(t_score), torch.stack(t_col),
                                columns)
            return
        for i in members:
            t_score, t_col = self._threshold(stack.names[i], current[stack.names[i]])
            threshold_mask_into(stack.weights[i], stack.dense[i], stack.factor[i], t_score, t_col, columns)

    def release(self) -> None:
        """Every stacked weight its own storage back (shared storage cannot be saved with safetensors)."""
        for stack in {id(s): s for s in self.stacks.values()}.values():
            if stack.weights is not None:
                for name in stack.names:
                    module = self.by_name[name].module
                    module.weight.data = module.weight.data.clone()
                stack.weights = None
