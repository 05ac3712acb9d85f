"""The threshold rule's Triton kernel gives the eager rule's bits, in every layout the pruner writes.

On the CPU the kernel runs in Triton's interpreter (float32 and float16: the interpreter's own
bfloat16 arithmetic drops the sign of a masked negative zero, which the GPU's does not); on CUDA the
compiled kernel, bfloat16 included."""

import pytest
import torch

from sieve.prune import threshold
from sieve.prune.threshold import KEEP_ALL, build_kernel, threshold_mask, threshold_mask_into


def _case(g: torch.Generator, members: int, rows: int, cols: int, dtype: torch.dtype, device: str = "cpu"):
    """Random weights with ties and negative values, factors, and each row's (s*, c*) at a third of
    its weights — on a tie, so that the column rule decides."""
    dense = torch.randn(members, rows, cols, generator=g).to(dtype)
    dense[:, :, 1] = -dense[:, :, 0]  # equal scores under a factor equal on both columns
    factor = torch.rand(members, 1, cols, generator=g) + 0.5
    factor[..., 1] = factor[..., 0]
    scores = dense.float().abs() * factor
    t_score = scores[..., :1].contiguous()  # the tied pair's score: column 1 is kept where c* = 0
    t_col = torch.randint(0, 2, (members, rows, 1), generator=g, dtype=torch.int32)
    t_score[:, ::3] = scores.sort(dim=-1).values[:, ::3, cols // 3 : cols // 3 + 1]
    to = dict(device=device)
    return dense.to(**to), factor.to(**to), t_score.to(**to), t_col.to(**to), torch.arange(cols, dtype=torch.int32, **to)


def _eager(dense, factor, t_score, t_col, columns):
    scores = dense.float().abs() * factor
    return dense * ((scores > t_score) | ((scores == t_score) & (columns > t_col)))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def _check_layouts(launch, g, members, rows, cols, dtype, device="cpu"):
    """One matrix (1-D factor; also column-major, and the first columns of a wider one), a stack
    written in place as a slice of a larger one, and ``K`` candidate slots of a stack (dense broadcast
    over the slots, one slot keeping everything)."""
    dense, factor, t_score, t_col, columns = _case(g, members, rows, cols, dtype, device)
    want = _eager(dense, factor, t_score, t_col, columns)
    assert 0 < int((want == 0).sum()) < want.numel() and bool((_bits(want) == _bits(torch.tensor(-0.0, dtype=dtype))).any())

    out = torch.empty(rows, cols, dtype=dtype, device=device)
    launch(out, dense[0], factor[0, 0], t_score[0], t_col[0])
    assert torch.equal(_bits(out), _bits(want[0]))
    out.zero_()
    launch(out, dense[0].t().contiguous().t(), factor[0, 0], t_score[0], t_col[0])  # a transposed module's weight
    assert torch.equal(_bits(out), _bits(want[0]))
    wide = torch.full((2, rows, -(-cols // 16) * 16 + 16), 7.0, dtype=dtype, device=device)
    wide[1, :, :cols] = dense[0]
    launch(wide[0, :, :cols], wide[1, :, :cols], factor[0, 0], t_score[0], t_col[0])  # rows 16-aligned, the width not
    assert torch.equal(_bits(wide[0, :, :cols]), _bits(want[0])) and bool((wide[0, :, cols:] == 7).all())

    stack = torch.full((members + 2, rows, cols), 7.0, dtype=dtype, device=device)
    launch(stack[1 : members + 1], dense, factor, t_score, t_col)
    assert torch.equal(_bits(stack[1 : members + 1]), _bits(want))
    assert bool((stack[0] == 7).all() and (stack[-1] == 7).all())

    slots_score = torch.stack([t_score, t_score * 0.5, torch.full_like(t_score, KEEP_ALL)], 1)
    slots_col = torch.stack([t_col, t_col, torch.zeros_like(t_col)], 1)
    out = torch.empty(members, 3, rows, cols, dtype=dtype, device=device)
    launch(out, dense.unsqueeze(1), factor.unsqueeze(1), slots_score, slots_col)
    assert torch.equal(_bits(out), _bits(_eager(dense.unsqueeze(1), factor.unsqueeze(1), slots_score, slots_col, columns)))
    assert torch.equal(_bits(out[:, 2]), _bits(dense))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 8, 16), (2, 5, 7), (1, 3, 2100)], ids=["aligned", "odd", "blocks"])
def test_interpreted_kernel_gives_the_eager_bits(shape, dtype):
    """The kernel's indexing, broadcasting and tie rule, through Triton's CPU interpreter: rows of 16
    columns (vector loads allowed), odd sizes (not), and rows wider than one program's block."""
    kernel = build_kernel(interpret=True)

    def launch(out, dense, factor, t_score, t_col):
        threshold._launch(out, dense, factor, t_score, t_col, kernel=kernel)

    _check_layouts(launch, torch.Generator().manual_seed(0), *shape, dtype)


def test_bad_operands_are_refused_with_one_line():
    kernel = build_kernel(interpret=True)
    dense = torch.ones(4, 8)
    with pytest.raises(ValueError, match="float32"):
        threshold._launch(dense.clone(), dense, torch.ones(8, dtype=torch.float64), torch.zeros(4, 1),
                          torch.zeros(4, 1, dtype=torch.int32), kernel=kernel)
    with pytest.raises(ValueError, match="last contiguous"):
        threshold._launch(torch.ones(8, 4).t(), dense, torch.ones(8), torch.zeros(4, 1),
                          torch.zeros(4, 1, dtype=torch.int32), kernel=kernel)


def test_cpu_runs_the_eager_rule():
    dense, factor, t_score, t_col, columns = _case(torch.Generator().manual_seed(1), 2, 4, 12, torch.bfloat16)
    assert not threshold._uses_kernel(dense)
    out = torch.empty_like(dense)
    threshold_mask_into(out, dense, factor, t_score, t_col, columns)
    assert torch.equal(_bits(out), _bits(_eager(dense, factor, t_score, t_col, columns)))
    assert torch.equal(_bits(threshold_mask(dense, factor, t_score, t_col, columns)), _bits(out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel runs on CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_kernel_gives_the_eager_bits(dtype):
    """On CUDA every write goes through the compiled kernel (Triton present) and equals the eager rule
    bit for bit, bfloat16 included; a large stack's rows are addressed past 2³¹ elements."""
    assert threshold._kernel() is not None and threshold._uses_kernel(torch.empty(1, device="cuda"))

    def launch(out, dense, factor, t_score, t_col):
        threshold_mask_into(out, dense, factor, t_score, t_col, torch.arange(out.shape[-1], device="cuda",
                                                                             dtype=torch.int32))

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 8, 16), (2, 5, 7), (4, 64, 4100)):
        _check_layouts(launch, g, *shape, dtype, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel runs on CUDA")
def test_cuda_kernel_addresses_past_two_to_the_31():
    """Offsets are 64-bit: the last member of a stack of more than 2³¹ elements is written right."""
    members, rows, cols = 9, 16384, 16384  # 2.4 G elements, 4.8 GB in bfloat16
    if torch.cuda.get_device_properties(0).total_memory < 3 * members * rows * cols * 2:
        pytest.skip("needs ~15 GB of GPU memory")
    dense = torch.ones(members, rows, cols, dtype=torch.bfloat16, device="cuda")
    dense[-1, -1, -4:] = torch.tensor([-3.0, 1.0, 2.0, 3.0], dtype=torch.bfloat16)
    factor = torch.ones(members, 1, cols, device="cuda")
    t_score = torch.full((members, rows, 1), 1.0, device="cuda")
    t_col = torch.full((members, rows, 1), cols - 3, dtype=torch.int32, device="cuda")
    out = torch.zeros_like(dense)
    threshold_mask_into(out, dense, factor, t_score, t_col, torch.arange(cols, device="cuda", dtype=torch.int32))
    last = out[-1, -1, -4:].float().tolist()
    assert last == [-3.0, 0.0, 2.0, 3.0] and float(out[0, 0, -1]) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel runs on CUDA")
def test_cuda_prewarm_compiles_what_the_first_launch_needs():
    """The background compilation builds the very variant a later launch of that layout uses (the
    launch compiles nothing more), and the launch waits for it."""
    kernel = threshold._kernel()
    cache = kernel.device_caches[torch.cuda.current_device()][0]
    before = len(cache)
    threshold.prewarm([(torch.float16, 3, 48)], torch.device("cuda"))  # a variant no other test compiles
    dense, factor, t_score, t_col, columns = _case(torch.Generator().manual_seed(2), 2, 3, 48, torch.float16, "cuda")
    out = torch.empty_like(dense)
    threshold_mask_into(out, dense, factor, t_score, t_col, columns)
    assert not threshold._compiling and len(cache) == before + 1
    assert torch.equal(_bits(out), _bits(_eager(dense, factor, t_score, t_col, columns)))
