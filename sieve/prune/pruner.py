"""Apply allocations to a live model, fast, and restore the dense weights exactly.

:class:`ModelPruner` is the thin stateful shell around the pure level functions. It keeps one dense
copy of every prunable matrix (same device and dtype, so restoring is a bit-exact ``copy_``) or, on
the fly, the model's own dense weights, and dispatches each matrix's level to what writes it:

* unstructured mask levels of a mask-only method (``S = |W| · f``, the per-channel factor ``f``
  kept here): a precomputed per-row threshold (:mod:`~sieve.prune.levels`), never a re-sort;
* other mask levels: the method's own ``prune`` or the scores' stable sort (:mod:`~sieve.primitives.mask`);
* rank levels: a slice ``W = A[:, :r] @ B[:r]`` of the matrix's data-aware factors up to its
  break-even rank (:class:`~sieve.primitives.lowrank.FactorCache`, one SVD per matrix, computed
  once), written at the matrix's own shape (so candidates run through the unchanged model; the real
  size and speed come with the factorised export);
* removed blocks: no weight is written; the allocation's ``removed_blocks`` are taken out of the
  model by its :class:`~sieve.models.depth.BlockRemoval` (the export's own rewrite, reversibly).

Where the weights go is the writers': :mod:`~sieve.prune.inplace` (stacks of same-shaped matrices,
one kernel per stack) and :mod:`~sieve.prune.live` (parametrised weights, computed at every forward).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch

from sieve.errors import SieveError
from sieve.models.depth import BlockRemoval
from sieve.models.matrix import Matrix
from sieve.primitives.base import DENSE, Level
from sieve.primitives.lowrank import FactorCache, Factors, LowRank
from sieve.primitives.mask import mask_from_scores
from sieve.prune.allocation import Allocation
from sieve.prune.inplace import InPlaceWriter, _Stack
from sieve.prune.levels import LevelTable, Threshold
from sieve.prune.live import LiveWriter
from sieve.prune.threshold import prewarm, threshold_mask
from sieve.scores.base import ScoringMethod
from sieve.stats import MatrixStats

__all__ = ["ModelPruner", "achieved_sparsity"]

log = logging.getLogger(__name__)


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

    A matrix's state is its :class:`~sieve.primitives.base.Level` (:meth:`state_of`): dense, ``k``
    zeros per row (N:M: per group), or rank ``r`` — written from the :class:`LevelTable`'s thresholds,
    the scoring method, or the :class:`FactorCache`'s factors.

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
                 contiguous: bool = False, graph_safe: bool = False, depth: BlockRemoval | None = None) -> None:
        if mode not in ("in_place", "on_the_fly"):
            raise ValueError(f"mode must be in_place or on_the_fly, got {mode!r}")
        if graph_safe and (mode != "on_the_fly" or method is None or not method.mask_only):
            raise ValueError("graph_safe needs on_the_fly mode and a mask-only scoring method")
        self.matrices = list(matrices)
        self.by_name = {m.name: m for m in self.matrices}
        self.method = method
        self.lowrank = lowrank
        self.depth = depth
        self.stats = stats
        self.mode = mode
        # where a matrix's pruned weight is computed: its own device, or ``device`` for every matrix
        # (a model whose blocks are streamed from host memory computes on the GPU)
        self.exec_device = {m.name: torch.device(device) if device is not None else m.stored.device
                            for m in self.matrices}
        self.cache = FactorCache(lowrank, stats)
        self.factor: dict[str, torch.Tensor] = {}
        if method is not None and method.mask_only:
            for m in self.matrices:
                self.factor[m.name] = method.column_factor(m.shape[1], stats.get(m.name, MatrixStats())).to(
                    self.exec_device[m.name]
                )
        self.table = LevelTable()
        if self.factor:  # the threshold kernel compiles while the caller precomputes levels
            for device in set(self.exec_device.values()):
                prewarm({(m.weight.dtype, *m.shape) for m in self.matrices if self.exec_device[m.name] == device},
                        device)
        self.current: dict[str, Level] = {m.name: DENSE for m in self.matrices}
        # on_the_fly parametrises a module's 2-D weight; an expert's slice of a 3-D tensor is pruned in place
        self.live = {m.name for m in self.matrices if mode == "on_the_fly" and m.expert is None}
        self.dense: dict[str, torch.Tensor] = {}
        self.on_the_fly = LiveWriter([m for m in self.matrices if m.name in self.live], self.weight_at, self.dense,
                                     {name: self._threshold(name) for name in self.live} if graph_safe else None)
        self.in_place = InPlaceWriter([m for m in self.matrices if m.name not in self.live], self.exec_device,
                                      self.factor, self.table, self.dense, contiguous)

    # the parts' state, under the names callers read (a lane shares its parent's levels and factors)
    @property
    def thresholds(self) -> dict[str, dict[int, Threshold]]:
        return self.table.thresholds

    @thresholds.setter
    def thresholds(self, value: dict[str, dict[int, Threshold]]) -> None:
        self.table.thresholds = value

    @property
    def factors(self) -> dict[str, Factors]:
        return self.cache.factors

    @factors.setter
    def factors(self, value: dict[str, Factors]) -> None:
        self.cache.factors = value

    @property
    def live_thresholds(self) -> dict[str, Threshold]:
        """Graph-safe: each live matrix's ``(s*, c*)`` buffers, read by every forward."""
        return self.on_the_fly.thresholds

    @property
    def stacks(self) -> dict[str, _Stack]:
        return self.in_place.stacks

    @property
    def writes(self) -> Counter[str]:
        return self.in_place.writes

    @property
    def whole_stack_devices(self) -> set[str]:
        return self.in_place.whole_stack_devices

    @whole_stack_devices.setter
    def whole_stack_devices(self, value: set[str]) -> None:
        self.in_place.whole_stack_devices = value

    def precompute_levels(self, row_counts: Mapping[str, Iterable[int]]) -> None:
        """Precompute thresholds for the given per-row prune counts of each matrix (mask-only)."""
        if self.method is None or not self.method.mask_only:
            return
        for name, counts in row_counts.items():
            self.table.precompute(name, self.dense[name].to(self.exec_device[name]), self.factor[name], counts)

    def factors_of(self, name: str) -> Factors:
        """The data-aware factors of a matrix up to its break-even rank (computed once)."""
        return self.cache.get(name, self.by_name[name].shape, self.dense[name].to(self.exec_device[name]))

    def apply(self, allocation: Allocation) -> None:
        """Prune every matrix to its allocated level (unlisted matrices are restored dense).

        Only matrices whose level changed are written."""
        if allocation.removed_blocks and self.depth is None:
            raise SieveError("the allocation removes decoder blocks, but this pruner was built without the model's "
                             "block list")
        changed, levels = [], []
        for m in self.matrices:
            level = self.state_of(m, allocation)
            if self.current[m.name] == level or level.removes_block:
                continue
            if level != DENSE and not level.factorised and self.method is None:
                raise SieveError(f"{m.name} is sparsified, but no scoring method was given")
            if m.name in self.live_thresholds and level != DENSE and not self._thresholded(m.name, level):
                raise SieveError(f"{m.name}: level {level} has no precomputed unstructured threshold; a graph-safe "
                                 "pruner applies those only")
            changed.append(m)
            levels.append(level)
        for m, level in zip(changed, levels, strict=True):
            self.current[m.name] = level
        self._write(changed)
        if self.depth is not None and self.depth.removed != allocation.removed_blocks:
            self.depth.show(sorted(allocation.removed_blocks))

    def _write(self, changed: Sequence[Matrix]) -> None:
        self.in_place.write([m for m in changed if m.name not in self.live], self.current, self._thresholded,
                            self.weight_at)
        self.on_the_fly.refill([m.name for m in changed], self._threshold)

    @staticmethod
    def state_of(m: Matrix, allocation: Allocation) -> Level:
        """``m``'s level under ``allocation`` (:meth:`~sieve.prune.allocation.Allocation.level_of`)."""
        return allocation.level_of(m)

    def _threshold(self, name: str) -> Threshold:
        return self.table.threshold(name, self.current[name], self.by_name[name].shape[0], self.exec_device[name])

    def _thresholded(self, name: str, level: Level) -> bool:
        """Whether ``level`` is applied by a precomputed threshold (mask-only, unstructured)."""
        return self.method is not None and self.method.mask_only and self.table.holds(name, level)

    def weight_at(self, name: str, dense: torch.Tensor | None = None) -> torch.Tensor:
        """The weight of matrix ``name`` (as ``(out, in)``) at its current level, from the dense
        weight (``dense``: where it is right now, for a parametrised weight)."""
        level = self.current[name]
        dense = self.dense[name] if dense is None else dense
        if name in self.live_thresholds:  # whatever the level: the same kernel on the same buffers
            columns = self.column_index(dense.shape[1], dense.device)
            return threshold_mask(dense.detach(), self.factor[name], *self.live_thresholds[name], columns)
        if level == DENSE:
            return dense
        if dense.device != self.exec_device[name]:  # a streamed block's weight read outside its forward
            dense = dense.to(self.exec_device[name])
        if level.factorised:
            return self.factors_of(name).weight(level.rank, dense.dtype)
        if not self.method.mask_only:
            return self.method.prune(dense, self.stats.get(name, MatrixStats()), level.sparsity, level.pattern)
        if self._thresholded(name, level):
            t_score, t_col = self.thresholds[name][level.k]
            columns = self.column_index(dense.shape[1], dense.device)
            return threshold_mask(dense.detach(), self.factor[name], t_score, t_col, columns)
        scores = dense.float().abs() * self.factor[name]
        return dense * mask_from_scores(scores, level.sparsity, level.pattern)

    def column_index(self, cols: int, device: torch.device) -> torch.Tensor:
        """``0 … cols − 1`` (int32) on ``device``, made once: the ``j`` of the threshold rule."""
        return self.table.column_index(cols, device)

    def restore(self) -> None:
        """Bit-identical dense weights back."""
        changed = [m for m in self.matrices if self.current[m.name] != DENSE]
        for m in changed:
            self.current[m.name] = DENSE
        self._write(changed)
        if self.depth is not None and self.depth.removed:
            self.depth.show(())

    def release(self) -> None:
        """Dense weights back and, for ``on_the_fly``, the model's plain modules (no parametrisation)."""
        self.restore()
        self.on_the_fly.release()
        self.in_place.release()


def achieved_sparsity(matrices: Sequence[Matrix]) -> float:
    """Parameter-weighted fraction of zeros across ``matrices`` as they are now."""
    zeros = sum(int((m.weight == 0).sum()) for m in matrices)
    return zeros / sum(m.numel for m in matrices)
