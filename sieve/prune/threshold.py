"""The threshold rule that applies a precomputed pruning level, eagerly and as one CUDA kernel.

A mask-only score is ``S = |W| · f`` (``f`` a per-input-channel factor, float32). A level prunes the
``k`` lowest-scoring weights of each row, ties broken by column like a stable sort; with the row's
``k``-th (score, column) stored as ``(s*, c*)`` the kept weights are

    keep_ij = S_ij > s*_i  or  (S_ij = s*_i and j > c*_i),     W = W_dense ⊙ keep

one elementwise pass (:func:`threshold_mask`). On CUDA, :func:`threshold_mask_into` runs it as one
Triton kernel for every layout the pruner writes — one matrix, a stack ``(G, out, in)``, or ``K``
candidate slots of a stack ``(G, K, out, in)`` — compiled once per dtype and tile, whatever the
shapes (``torch.compile`` compiled one static-shape kernel per layout, 0.35–0.6 s each on an H100
with empty caches, and past dynamo's recompile limit fell back to eager). Each program masks a tile
of rows of one matrix, so the index arithmetic is a few divisions per tile, none per element. The
bits are those of the eager rule: the same float32 products and comparisons, and ``W · keep``
(tested).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

#: a threshold score that keeps every weight (scores ``|W|·f`` are ``≥ 0``): dense members of a
#: stack written by the threshold rule, with column threshold 0
KEEP_ALL = -1.0


def score_keys(dense: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys ordering a row's weights like a stable sort of ``|W| · f``:
    ``bits(S_ij) · cols + j`` (float32 bits of ``S ≥ 0`` are monotone in ``S``)."""
    scores = dense.float().abs() * factor
    cols = scores.shape[1]
    bits = scores.view(torch.int32).to(torch.int64)
    return bits * cols + torch.arange(cols, device=scores.device)


def threshold_mask(dense: torch.Tensor, factor: torch.Tensor, t_score: torch.Tensor, t_col: torch.Tensor,
                   columns: torch.Tensor) -> torch.Tensor:
    """``W ⊙ keep`` with ``keep_ij = S_ij > s*_i or (S_ij = s*_i and j > c*_i)``, ``S = |W|·f`` in float32
    (``columns``: ``0 … cols − 1``, int32). On CUDA the kernel of :func:`threshold_mask_into`."""
    if _uses_kernel(dense):
        out = torch.empty(dense.shape, dtype=dense.dtype, device=dense.device)  # row-major, whatever dense's strides
        threshold_mask_into(out, dense, factor, t_score, t_col, columns)
        return out
    return _eager(dense, factor, t_score, t_col, columns)


def threshold_mask_into(out: torch.Tensor, dense: torch.Tensor, factor: torch.Tensor, t_score: torch.Tensor,
                        t_col: torch.Tensor, columns: torch.Tensor) -> None:
    """``out ← threshold_mask(...)``, broadcast like the eager rule: ``out`` ``(…, out, in)``, ``dense``
    of its shape or broadcast to it, ``factor`` ``(…, 1, in)`` or ``(in,)``, ``t_score`` (float32) and
    ``t_col`` (int32) ``(…, out, 1)``. On CUDA one kernel that writes straight into ``out`` (no
    temporary); elsewhere eager."""
    if not _uses_kernel(out):
        out.copy_(_eager(dense, factor, t_score, t_col, columns))
        return
    _launch(out, dense, factor, t_score, t_col)


def _eager(dense, factor, t_score, t_col, columns) -> torch.Tensor:
    scores = dense.float().abs() * factor
    keep = (scores > t_score) | ((scores == t_score) & (columns > t_col))
    return dense * keep


def _uses_kernel(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda" and _kernel() is not None


@functools.cache
def _kernel():
    """The Triton kernel, or ``None`` (said once) where Triton is not installed."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        log.warning("Triton is unavailable (%s); pruning levels are applied by eager kernels on CUDA "
                    "(slower, same result)", exc)
        return None
    return build_kernel()


def build_kernel(interpret: bool = False):
    """The threshold rule as a Triton kernel (``interpret``: for Triton's CPU interpreter, in tests).

    Grid ``(G · K · rows / ROWS, ⌈cols / BLOCK⌉)``: program ``(t, b)`` masks a ``ROWS × BLOCK`` tile,
    columns ``b·BLOCK …`` of rows ``i₀ … i₀ + ROWS − 1`` of one (member, slot) — ``ROWS`` divides
    ``rows``, so with ``r₀ = t·ROWS``: ``i₀ = r₀ mod rows``, slot ``(r₀ div rows) mod K``, member
    ``(r₀ div rows) div K``, three 32-bit divisions per tile and one load of the factor's block for
    all its rows. The tile's base offset is 64-bit (stacks past 2³¹ elements), offsets within it
    32-bit. Sizes and strides are run-time values (one compile per dtype, tile and ``ALIGNED``).
    ``ALIGNED`` says that ``cols`` and every stride but the columns' are multiples of 16 elements;
    the row strides and ``cols``, rewritten as ``x // 16 * 16`` (the same values), let the compiler
    prove that each row's columns start aligned and that the bounds mask is constant over 16
    columns, so loads and stores are 16-byte vectors. Without it (a run-time stride proves nothing)
    every bf16 element was its own 2-byte load."""
    import triton
    import triton.language as tl

    def threshold_mask_kernel(out, dense, factor, t_score, t_col, rows, slots, cols,
                              out_g, out_k, out_r, dense_g, dense_k, dense_r, factor_g, factor_k,
                              thr_g, thr_k, thr_r, ROWS: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
        r0 = tl.program_id(0) * ROWS
        i0 = r0 % rows
        member_slot = r0 // rows
        k = (member_slot % slots).to(tl.int64)
        g = (member_slot // slots).to(tl.int64)
        out_base = g * out_g + k * out_k + i0.to(tl.int64) * out_r
        dense_base = g * dense_g + k * dense_k + i0.to(tl.int64) * dense_r
        factor_base = g * factor_g + k * factor_k
        if ALIGNED:
            out_base = tl.multiple_of(out_base, 16)
            dense_base = tl.multiple_of(dense_base, 16)
            factor_base = tl.multiple_of(factor_base, 16)
            out_r, dense_r, cols = out_r // 16 * 16, dense_r // 16 * 16, cols // 16 * 16
        i = tl.arange(0, ROWS)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = (j < cols)[None, :]
        thr = g * thr_g + k * thr_k + i0.to(tl.int64) * thr_r + i * thr_r
        s_star = tl.load(t_score + thr)[:, None]
        c_star = tl.load(t_col + thr)[:, None]
        f = tl.load(factor + factor_base + j, mask=j < cols)[None, :]
        w = tl.load(dense + dense_base + (i[:, None] * dense_r + j[None, :]), mask=inside)
        score = tl.abs(w.to(tl.float32)) * f
        keep = (score > s_star) | ((score == s_star) & (j[None, :] > c_star))
        tl.store(out + out_base + (i[:, None] * out_r + j[None, :]), w * keep.to(w.dtype), mask=inside)

    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(threshold_mask_kernel)
    sizes = ["rows", "slots", "cols", "out_g", "out_k", "out_r", "dense_g", "dense_k", "dense_r", "factor_g",
             "factor_k", "thr_g", "thr_k", "thr_r"]
    return triton.jit(threshold_mask_kernel, do_not_specialize=sizes)


def tile(rows: int, cols: int) -> tuple[int, int]:
    """``(ROWS, BLOCK)``: 4096 elements per program (16 per thread of 256) where ``rows`` allows —
    ``ROWS`` the largest power of two up to 16 dividing ``rows``, ``BLOCK`` 256 columns for rows
    narrower than 1024 (less masked-off waste), else 1024."""
    block = 256 if cols < 1024 else 1024
    most = 4096 // block
    return next(r for r in (16, 8, 4, 2, 1) if r <= most and rows % r == 0), block


_compiling: list[threading.Thread] = []


def prewarm(layouts: Iterable[tuple[torch.dtype, int, int]], device: torch.device) -> None:
    """Compile the kernel for matrices of these ``(dtype, rows, cols)`` in a background thread, so
    that the compilation (about 1.5 s on a fresh machine) overlaps whatever the caller does next —
    a search's level precomputation, task encoding and dense reference forwards — instead of holding
    up its first candidate. The first launch waits for it. A no-op off CUDA or without Triton; a
    compilation that fails here is said once and happens at first use instead."""
    if device.type != "cuda" or _kernel() is None:
        return
    kernel = _kernel()
    variants = sorted({(dtype, *tile(rows, cols), cols % 16 == 0) for dtype, rows, cols in layouts}, key=str)

    def compile_variants() -> None:
        try:
            with torch.cuda.device(device):
                for dtype, per, block, aligned in variants:
                    kernel.warmup(dtype, dtype, torch.float32, torch.float32, torch.int32, *[4096] * 14, grid=(1,),
                                  ROWS=per, BLOCK=block, ALIGNED=aligned)
        except Exception as exc:  # noqa: BLE001 - compiled at first use instead (the same kernel)
            log.warning("compiling the threshold kernel ahead failed (%s: %s); it compiles at first use",
                        type(exc).__name__, exc)

    thread = threading.Thread(target=compile_variants, name="sieve-threshold-compile", daemon=True)
    thread.start()
    _compiling.append(thread)


def _launch(out, dense, factor, t_score, t_col, kernel=None) -> None:
    """Run the kernel (``kernel``, default :func:`_kernel`'s) over ``out`` viewed as ``(G, K, rows, cols)``
    with every operand broadcast to it (stride 0 where broadcast)."""
    while _compiling:
        _compiling.pop().join()
    if not 2 <= out.dim() <= 4 or out.stride(-1) != 1:
        raise ValueError(f"threshold_mask_into: out must have 2 to 4 dimensions, the last contiguous; "
                         f"got {tuple(out.shape)} with strides {out.stride()}")
    if factor.dtype != torch.float32 or t_score.dtype != torch.float32 or t_col.dtype != torch.int32:
        raise ValueError("threshold_mask_into: factor and t_score must be float32, t_col int32")
    out4 = _as4(out)
    shape = tuple(out4.shape)
    dense4 = _last_contiguous(_as4(dense).expand(shape))
    factor4 = _last_contiguous(_as4(factor).expand(*shape[:-2], 1, shape[-1]))
    score4, col4 = (_as4(t).expand(*shape[:-1], 1) for t in (t_score, t_col))
    if score4.stride() != col4.stride():  # one set of strides for both: materialise the small tables
        score4, col4 = score4.contiguous(), col4.contiguous()
    g, k, rows, cols = shape
    rows_at = (*_strides(out4, 3), *_strides(dense4, 3), *_strides(factor4, 2))
    aligned = cols % 16 == 0 and all(s % 16 == 0 for s in rows_at)
    per, block = tile(rows, cols)
    grid = (g * k * rows // per, -(-cols // block))
    (kernel or _kernel())[grid](out4, dense4, factor4, score4, col4, rows, k, cols, *rows_at,
                                *score4.stride()[:3], ROWS=per, BLOCK=block, ALIGNED=aligned)


def _strides(t: torch.Tensor, dims: int) -> tuple[int, ...]:
    """The first ``dims`` strides, 0 for a dimension of size 1 (never stepped, so it cannot misalign)."""
    return tuple(0 if n == 1 else s for n, s in zip(t.shape[:dims], t.stride()[:dims]))


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _as4(t: torch.Tensor) -> torch.Tensor:
    return t[(None,) * (4 - t.dim())] if t.dim() < 4 else t
