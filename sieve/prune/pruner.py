"""Apply allocations in place, fast, and restore the dense weights exactly.

:class:`ModelPruner` is the thin stateful shell around the pure mask functions. It keeps one dense
copy of every prunable matrix (same device and dtype, so restoring is a bit-exact ``copy_``) and,
for mask-only methods (``S = |W| · f``), the per-channel factor ``f``. Re-pruning at another level
never re-sorts: for each level in a registered grid it precomputes each row's threshold key,

    key_ij = bits(S_ij) · cols + j          (float32 bits of S ≥ 0 are monotone in S)

so that the ``k`` lowest keys of a row are exactly the ``k`` weights a stable sort would prune. The
``k``-th key is stored split into its score ``s*`` and column ``c*``; applying level ``k`` is then
one elementwise pass over the matrix,

    keep_ij = S_ij > s*_i  or  (S_ij = s*_i and j > c*_i),     W = W_dense ⊙ keep

with no int64 keys materialised: no level database, and memory is the model, its dense copy and
``rows × levels`` thresholds.

In place, matrices of one shape, dtype and device form a **stack**: their dense copies live in one
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

Factorised matrices (``allocation.ranks``, the :mod:`~sieve.primitives.lowrank` primitive) keep
their data-aware factors up to the break-even rank — one SVD per matrix, computed once — and a rank
is a slice: ``W = A[:, :r] @ B[:r]``, written in place at the matrix's own shape (so candidates
run through the unchanged model; the real size and speed come with the factorised export).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from sieve.errors import SieveError
from sieve.models.matrix import Matrix
from sieve.primitives.lowrank import Factors, LowRank, break_even_rank, factorize
from sieve.primitives.mask import UNSTRUCTURED, mask_from_scores, row_prune_count
from sieve.prune.allocation import Allocation
from sieve.prune.threshold import KEEP_ALL, prewarm, score_keys, threshold_mask, threshold_mask_into
from sieve.scores.base import ScoringMethod
from sieve.stats import MatrixStats

log = logging.getLogger(__name__)

DENSE = (0, UNSTRUCTURED)


def choose_mode(requested: str, device: torch.device, matrix_bytes: int, free_bytes: int | None,
                streamed: bool = False) -> str:
    """The pruner mode for ``requested`` (``auto``, ``in_place`` or ``on_the_fly``).

    ``auto`` picks ``in_place`` wherever its dense copy fits with room to spare — on the CPU, or on
    a GPU whose free memory is at least twice the pruned matrices' bytes (the copy plus as much
    again for activations) — and ``on_the_fly`` otherwise, or when blocks are streamed from host
    memory. ``in_place`` costs one pruning pass per candidate; ``on_the_fly`` one per forward, which
    a search with several batches (and a shared-prefix forward per batch) repeats many times per
    candidate: on an H100, SmolLM2-135M's 30-generation search ran 968 candidates in 107 s
    in place (fp32) and in 268 s on the fly (bf16).
    """
    if requested not in ("auto", "in_place", "on_the_fly"):
        raise ValueError(f"pruner mode must be auto, in_place or on_the_fly, got {requested!r}")
    if requested != "auto":
        return requested
    if streamed:
        return "on_the_fly"
    if device.type == "cpu" or free_bytes is None:
        return "in_place"
    return "in_place" if free_bytes >= 2 * matrix_bytes else "on_the_fly"


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


class _LiveWeight(torch.nn.Module):
    """Parametrisation for ``on_the_fly`` mode: the module's weight is computed from its dense
    original at every access (every forward), for the pruner's current level of that matrix."""

    def __init__(self, pruner: ModelPruner, name: str, transposed: bool) -> None:
        super().__init__()
        self.pruner, self.name, self.transposed = pruner, name, transposed

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        weight = self.pruner.weight_at(self.name, original.t() if self.transposed else original)
        return weight.t() if self.transposed else weight


class ModelPruner:
    """Prunes ``matrices`` of a live model according to allocations.

    ``mode="in_place"``: each apply writes the pruned weights into the model (a dense copy is kept
    to restore from: memory ≈ 2× the matrices). ``mode="on_the_fly"``: the model keeps its dense
    weights and each matrix's weight is computed from them at every forward
    (``torch.nn.utils.parametrize``) for the current level — no second copy (memory ≈ 1×), one
    fused elementwise pass per matrix per forward; :meth:`release` removes the parametrisations.
    Both give the same weights bit for bit (tested). An expert's slice of a 3-D MoE tensor is
    always pruned in place. ``writes`` counts matrices written through a stack (``stacked``, of them
    ``direct`` straight into the model's weights) and one by one (``single``).

    ``graph_safe`` (``on_the_fly``, a mask-only method): every live weight is computed by the
    threshold kernel from thresholds held in one fixed buffer per matrix, which :meth:`apply` refills
    (a dense matrix gets the keep-everything threshold). A forward then launches the same kernels on
    the same storage whatever the candidate, so a CUDA graph captured once replays every candidate
    with the memory of one copy of the weights. Only precomputed unstructured levels can be applied
    so (anything else is an error).

    ``contiguous`` (in place): the model's own weights of each stack become the slices of one
    ``(G, out, in)`` tensor too (the parameters keep their identity; their ``.data`` moves), so a
    chunk of changed members is masked by one fused kernel writing straight into the model — no
    temporary and no second copy. :meth:`release` gives every weight its own storage back (a model
    whose parameters share storage cannot be saved with safetensors).
    """

    def __init__(self, matrices: Sequence[Matrix], method: ScoringMethod | None, stats: Mapping[str, MatrixStats],
                 lowrank: LowRank | None = None, mode: str = "in_place", device: torch.device | None = None,
                 contiguous: bool = False, graph_safe: bool = False) -> None:
        if mode not in ("in_place", "on_the_fly"):
            raise ValueError(f"mode must be in_place or on_the_fly, got {mode!r}")
        if graph_safe and (mode != "on_the_fly" or method is None or not method.mask_only):
            raise ValueError("graph_safe needs on_the_fly mode and a mask-only scoring method")
        self.matrices = list(matrices)
        self.by_name = {m.name: m for m in self.matrices}
        self.method = method
        self.lowrank = lowrank
        self.stats = stats
        self.mode = mode
        # where a matrix's pruned weight is computed: its own device, or ``device`` for every matrix
        # (a model whose blocks are streamed from host memory computes on the GPU)
        self.exec_device = {m.name: torch.device(device) if device is not None else m.stored.device
                            for m in self.matrices}
        self.factors: dict[str, Factors] = {}
        self.factor: dict[str, torch.Tensor] = {}
        if method is not None and method.mask_only:
            for m in self.matrices:
                self.factor[m.name] = method.column_factor(m.shape[1], stats.get(m.name, MatrixStats())).to(
                    self.exec_device[m.name]
                )
        self.thresholds: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        if self.factor:  # the threshold kernel compiles while the caller precomputes levels
            for device in set(self.exec_device.values()):
                prewarm({(m.weight.dtype, *m.shape) for m in self.matrices if self.exec_device[m.name] == device},
                        device)
        self.current: dict[str, tuple] = {m.name: DENSE for m in self.matrices}
        self._sparsity: dict[str, float] = {}  # the nominal sparsity behind a (count, pattern) state
        self._columns: dict[tuple[int, str], torch.Tensor] = {}
        self._keep_all: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.whole_stack_devices = {"cuda"}  # where a changed contiguous stack is rewritten whole
        # on_the_fly parametrises a module's 2-D weight; an expert's slice of a 3-D tensor is pruned in place
        self.live = {m.name for m in self.matrices if mode == "on_the_fly" and m.expert is None}
        # graph_safe: each live matrix's (s*, c*) buffers, read by every forward
        self.live_thresholds = {name: tuple(t.clone() for t in self._threshold(name))
                                for name in sorted(self.live)} if graph_safe else {}
        self.dense: dict[str, torch.Tensor] = {}
        self.stacks: dict[str, _Stack] = {}  # matrix name -> its stack
        self.writes: Counter[str] = Counter()
        groups: dict[tuple, list[Matrix]] = {}
        for m in self.matrices:
            if m.name not in self.live:
                w = m.weight
                groups.setdefault((m.shape, w.dtype, str(w.device), str(self.exec_device[m.name])), []).append(m)
                continue
            parametrize.register_parametrization(m.module, "weight", _LiveWeight(self, m.name, m.transposed), unsafe=True)
            original = m.module.parametrizations.weight.original.detach()
            self.dense[m.name] = original.t() if m.transposed else original
        for (shape, dtype, device, exec_device), members in groups.items():
            if len(members) == 1 or device != exec_device:
                for m in members:
                    self.dense[m.name] = m.weight.detach().clone()
                continue
            dense = torch.empty((len(members), *shape), dtype=dtype, device=device)
            for i, m in enumerate(members):
                dense[i].copy_(m.weight)
                self.dense[m.name] = dense[i]
            factor = (torch.stack([self.factor[m.name] for m in members]).unsqueeze(1)
                      if self.factor else None)
            stack = _Stack([m.name for m in members], dense, factor)
            if contiguous and all(m.expert is None and not m.transposed for m in members):
                stack.weights = dense.clone()
                for i, m in enumerate(members):
                    m.module.weight.data = stack.weights[i]
            self.stacks.update({m.name: stack for m in members})
        self._released = False

    def precompute_levels(self, row_counts: Mapping[str, Iterable[int]]) -> None:
        """Precompute thresholds for the given per-row prune counts of each matrix (mask-only)."""
        if self.method is None or not self.method.mask_only:
            return
        for name, counts in row_counts.items():
            counts = sorted({int(k) for k in counts if k > 0})
            if not counts:
                continue
            keys = score_keys(self.dense[name].to(self.exec_device[name]), self.factor[name])
            cols = keys.shape[1]
            kth = torch.sort(keys, dim=1).values[:, [k - 1 for k in counts]]
            score = (kth // cols).to(torch.int32).view(torch.float32)
            column = (kth % cols).to(torch.int32)
            self.thresholds[name] = {
                k: (score[:, i].contiguous().unsqueeze(1), column[:, i].contiguous().unsqueeze(1))
                for i, k in enumerate(counts)
            }
            del keys, kth

    def factors_of(self, name: str) -> Factors:
        """The data-aware factors of a matrix up to its break-even rank (computed once)."""
        if name not in self.factors:
            if self.lowrank is None:
                raise SieveError(f"{name} is factorised, but no low-rank primitive was given")
            m, stats = self.by_name[name], self.stats.get(name, MatrixStats())
            cov = self.lowrank.covariance_of(stats.general.hessian if stats.general is not None else None,
                                             stats.task.hessian if stats.task is not None else None)
            keep = break_even_rank(*m.shape)
            found = factorize(self.dense[name].to(self.exec_device[name]), cov, self.lowrank.damp, keep)
            self.factors[name] = Factors(found.a.float(), found.b.float(), found.sigma)
        return self.factors[name]

    def apply(self, allocation: Allocation) -> None:
        """Prune every matrix to its allocated sparsity or rank (unlisted matrices are restored dense).

        Only matrices whose level changed are written."""
        changed, states = [], []
        for m in self.matrices:
            state, sparsity = self.state_of(m, allocation)
            if self.current[m.name] == state:
                continue
            if state[0] != "rank" and state[0] and self.method is None:
                raise SieveError(f"{m.name} is sparsified, but no scoring method was given")
            if m.name in self.live_thresholds and state != DENSE and not self._thresholded(m.name, state):
                raise SieveError(f"{m.name}: level {state} has no precomputed unstructured threshold; a graph-safe "
                                 "pruner applies those only")
            changed.append(m)
            states.append((state, sparsity))
        for m, (state, sparsity) in zip(changed, states, strict=True):
            self.current[m.name], self._sparsity[m.name] = state, sparsity
        self._write([m for m in changed if m.name not in self.live])
        self._refill([m.name for m in changed if m.name in self.live_thresholds])

    def _refill(self, names: Sequence[str]) -> None:
        """The live threshold buffers of ``names`` ← their current levels' (one multi-tensor copy)."""
        if names:
            thresholds = [self._threshold(name) for name in names]
            torch._foreach_copy_([b for name in names for b in self.live_thresholds[name]],
                                 [t for pair in thresholds for t in pair])

    @staticmethod
    def state_of(m: Matrix, allocation: Allocation) -> tuple[tuple, float]:
        """``(state, sparsity)`` of ``m`` under ``allocation``: ``("rank", r)``, or ``(k, pattern)`` —
        ``k`` weights pruned per row (per group of ``pattern.m`` for N:M), ``DENSE`` for none."""
        if m.name in allocation.ranks and allocation.ranks[m.name] < break_even_rank(*m.shape):
            return ("rank", allocation.ranks[m.name]), 0.0
        sparsity = allocation.sparsity.get(m.name, 0.0)
        pattern = allocation.pattern_of(m.name)
        k = round(sparsity * pattern.m) if pattern.structured else row_prune_count(m.shape[1], sparsity)
        return (k, pattern if k else UNSTRUCTURED), sparsity

    def _write(self, changed: Sequence[Matrix]) -> None:
        """Write the current level of each of ``changed`` into the model: contiguous CUDA stacks whole
        or member by member, dense ones by one multi-tensor copy, thresholded ones
        stack by stack, the rest one by one."""
        whole = self._whole_stacks(changed)
        for key, stack in whole.items():
            members = sorted(stack.index[m.name] for m in changed if id(self.stacks.get(m.name)) == key)
            member_bytes = stack.dense[0].numel() * stack.dense.element_size()
            if len(members) * max(member_bytes, _LAUNCH_BYTES) < len(stack.names) * member_bytes:
                self._rewrite(stack, members)
                self.writes.update(member=len(members))
            else:
                self._rewrite(stack)
        restored, masked, single = [], {}, []
        for m in changed:
            state = self.current[m.name]
            if m.name in self.stacks and id(self.stacks[m.name]) in whole:
                self.writes.update(direct=1)
            elif state == DENSE:
                restored.append(m)
            elif m.name in self.stacks and self._thresholded(m.name, state):
                masked.setdefault(id(self.stacks[m.name]), []).append(m)
            else:
                single.append(m)
        if restored:
            torch._foreach_copy_([m.weight for m in restored], [self.dense[m.name] for m in restored])
        for members in masked.values():
            if len(members) == 1:
                single.extend(members)
                continue
            stack = self.stacks[members[0].name]
            indices = sorted(stack.index[m.name] for m in members)
            for part in _runs(indices) if stack.weights is not None else stack.chunks(indices):
                chosen = [stack.names[i] for i in part]
                t_score = torch.stack([self.thresholds[n][self.current[n][0]][0] for n in chosen])
                t_col = torch.stack([self.thresholds[n][self.current[n][0]][1] for n in chosen])
                dense = stack.select(stack.dense, part)
                columns = self.column_index(dense.shape[-1], dense.device)
                factor = stack.select(stack.factor, part)
                if stack.weights is not None:
                    out = stack.weights[part[0] : part[0] + len(part)]
                    threshold_mask_into(out, dense, factor, t_score, t_col, columns)
                    self.writes.update(direct=len(part))
                    continue
                pruned = threshold_mask(dense, factor, t_score, t_col, columns)
                torch._foreach_copy_([self.by_name[n].weight for n in chosen], list(pruned.unbind(0)))
        for m in single:
            m.weight.copy_(self.weight_at(m.name))
        self.writes.update(stacked=len(changed) - len(single), single=len(single))

    def _whole_stacks(self, changed: Sequence[Matrix]) -> dict[int, _Stack]:
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
                    and all(self.current[n] == DENSE or self._thresholded(n, self.current[n]) for n in stack.names)):
                whole[id(stack)] = stack
        return whole

    def _rewrite(self, stack: _Stack, members: Sequence[int] | None = None) -> None:
        """Every member of ``stack`` (or those of ``members``, one at a time) at its current level
        (dense ones through a keep-everything threshold, :data:`KEEP_ALL`), by the threshold kernel into
        the model: the same elementwise rule, so the same bits either way."""
        columns = self.column_index(stack.dense.shape[-1], stack.dense.device)
        if members is None:
            t_score, t_col = zip(*(self._threshold(n) for n in stack.names), strict=True)
            threshold_mask_into(stack.weights, stack.dense, stack.factor, torch.stack(t_score), torch.stack(t_col),
                                columns)
            return
        for i in members:
            t_score, t_col = self._threshold(stack.names[i])
            threshold_mask_into(stack.weights[i], stack.dense[i], stack.factor[i], t_score, t_col, columns)

    def _threshold(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.current[name]
        if state != DENSE:
            return self.thresholds[name][state[0]]
        rows, device = self.by_name[name].shape[0], self.exec_device[name]
        key = (rows, -1, str(device))
        if key not in self._keep_all:
            self._keep_all[key] = (torch.full((rows, 1), KEEP_ALL, device=device),
                                   torch.zeros((rows, 1), dtype=torch.int32, device=device))
        return self._keep_all[key]

    def _thresholded(self, name: str, state: tuple) -> bool:
        """Whether ``state`` is applied by a precomputed threshold (mask-only, unstructured)."""
        return (state[0] != "rank" and self.method is not None and self.method.mask_only
                and not state[1].structured and state[0] in self.thresholds.get(name, {}))

    def weight_at(self, name: str, dense: torch.Tensor | None = None) -> torch.Tensor:
        """The weight of matrix ``name`` (as ``(out, in)``) at its current level, from the dense
        weight (``dense``: where it is right now, for a parametrised weight)."""
        state = self.current[name]
        dense = self.dense[name] if dense is None else dense
        if name in self.live_thresholds:  # whatever the level: the same kernel on the same buffers
            columns = self.column_index(dense.shape[1], dense.device)
            return threshold_mask(dense.detach(), self.factor[name], *self.live_thresholds[name], columns)
        if state == DENSE:
            return dense
        if dense.device != self.exec_device[name]:  # a streamed block's weight read outside its forward
            dense = dense.to(self.exec_device[name])
        if state[0] == "rank":
            return self.factors_of(name).weight(state[1], dense.dtype)
        k, pattern = state
        if not self.method.mask_only:
            return self.method.prune(dense, self.stats.get(name, MatrixStats()), self._sparsity[name], pattern)
        if self._thresholded(name, state):
            t_score, t_col = self.thresholds[name][k]
            columns = self.column_index(dense.shape[1], dense.device)
            return threshold_mask(dense.detach(), self.factor[name], t_score, t_col, columns)
        scores = dense.float().abs() * self.factor[name]
        return dense * mask_from_scores(scores, self._sparsity[name], pattern)

    def column_index(self, cols: int, device: torch.device) -> torch.Tensor:
        """``0 … cols − 1`` (int32) on ``device``, made once: the ``j`` of the threshold rule."""
        key = (cols, str(device))
        if key not in self._columns:
            self._columns[key] = torch.arange(cols, device=device, dtype=torch.int32)
        return self._columns[key]

    def restore(self) -> None:
        """Bit-identical dense weights back."""
        changed = [m for m in self.matrices if self.current[m.name] != DENSE]
        for m in changed:
            self.current[m.name] = DENSE
        self._write([m for m in changed if m.name not in self.live])
        self._refill([m.name for m in changed if m.name in self.live_thresholds])

    def release(self) -> None:
        """Dense weights back and, for ``on_the_fly``, the model's plain modules (no parametrisation)."""
        self.restore()
        if not self._released:
            for m in self.matrices:
                if m.name in self.live:
                    parametrize.remove_parametrizations(m.module, "weight", leave_parametrized=False)
            for stack in {id(s): s for s in self.stacks.values()}.values():
                if stack.weights is not None:
                    for name in stack.names:
                        module = self.by_name[name].module
                        module.weight.data = module.weight.data.clone()
                    stack.weights = None
            self._released = True


def achieved_sparsity(matrices: Sequence[Matrix]) -> float:
    """Parameter-weighted fraction of zeros across ``matrices`` as they are now."""
    zeros = sum(int((m.weight == 0).sum()) for m in matrices)
    return zeros / sum(m.numel for m in matrices)
