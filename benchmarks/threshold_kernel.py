"""The pruner's threshold kernel against the ``torch.compile`` static-shape kernels it replaced.

For each layout a search writes (an 8B Llama's four stack shapes whole, one of its largest members
alone, SmolLM2-135M's 24 candidate slots of a stack) this prints, per implementation: the first
call's seconds (compilation included: run with empty ``TRITON_CACHE_DIR`` / ``TORCHINDUCTOR_CACHE_DIR``
for a fresh machine's), the steady time per call and the bandwidth (dense read + weights written),
and checks that every implementation gives the eager rule's bits.

    python benchmarks/threshold_kernel.py [--out-dir DIR] [--tag TAG]      (CUDA)
    python benchmarks/threshold_kernel.py --smoke                          (CPU: Triton's interpreter)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance, sync, write_result  # noqa: E402

from sieve.prune import threshold  # noqa: E402

#: (name, stack shape (G, [K,] rows, cols)): whole stacks of an 8B Llama, one member, 135M's slots
LAYOUTS = [("8b-qo-stack", (32, 4096, 4096)), ("8b-kv-stack", (32, 1024, 4096)),
           ("8b-gate-up-stack", (32, 14336, 4096)), ("8b-down-stack", (32, 4096, 14336)),
           ("8b-gate-member", (1, 14336, 4096)), ("135m-up-slots", (30, 24, 1536, 576)),
           ("135m-q-slots", (30, 24, 576, 576))]
SMOKE_LAYOUTS = [("tiny-stack", (3, 8, 16)), ("tiny-slots", (2, 3, 5, 40))]


def operands(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """``out`` of ``shape``; dense weights, factors and thresholds (about half of each row kept),
    broadcast over the slots of a 4-D shape like the candidate writes."""
    g = torch.Generator(device=device).manual_seed(0)
    members, rows, cols = shape[0], shape[-2], shape[-1]
    slots = shape[1:-2]
    dense = torch.randn(members, *([1] if slots else []), rows, cols, generator=g, device=device).to(dtype)
    factor = torch.rand(members, *([1] if slots else []), 1, cols, generator=g, device=device) + 0.5
    t_score = torch.rand(members, *slots, rows, 1, generator=g, device=device)
    t_col = torch.randint(0, cols, (members, *slots, rows, 1), generator=g, device=device, dtype=torch.int32)
    columns = torch.arange(cols, device=device, dtype=torch.int32)
    return torch.empty(shape, dtype=dtype, device=device), dense, factor, t_score, t_col, columns


def eager_into(out, dense, factor, t_score, t_col, columns) -> None:
    """The pruner's eager rule, written into ``out`` (the reference, and what torch.compile fuses)."""
    out.copy_(threshold._eager(dense, factor, t_score, t_col, columns))


def timed(fn, args, device: torch.device, reps: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of ``reps`` later calls)."""
    sync(device)
    t0 = time.perf_counter()
    fn(*args)
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, sorted(times)[len(times) // 2]


def implementations(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        kernel = threshold.build_kernel(interpret=True)
        return {"triton-interpreted": lambda out, d, f, s, c, _: threshold._launch(out, d, f, s, c, kernel=kernel)}
    return {"triton": threshold.threshold_mask_into,
            "torch.compile static": torch.compile(eager_into, dynamic=False),
            "eager": eager_into}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, through Triton's interpreter")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("threshold_kernel: needs a CUDA GPU (or --smoke)")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    rows = []
    torch._dynamo.config.cache_size_limit = 64  # one static compile per layout
    for name, shape in SMOKE_LAYOUTS if args.smoke else LAYOUTS:
        out, *rest = operands(shape, dtype, device)
        want = torch.empty_like(out)
        eager_into(want, *rest)
        moved = 2 * out.numel() * out.element_size()  # the weights written, and a dense read per slot
        for impl, fn in implementations(device).items():
            out.zero_()
            first, steady = timed(fn, (out, *rest), device, 1 if args.smoke else args.reps)
            rows.append({"layout": name, "shape": list(shape), "implementation": impl, "first_call_s": round(first, 4),
                         "call_ms": round(1e3 * steady, 4), "gb_per_s": round(moved / steady / 1e9, 1),
                         "bit_identical": bool(torch.equal(bits(out), bits(want)))})
            print(f"{name:18s} {impl:22s} first {first:7.3f} s  {1e3 * steady:8.3f} ms  "
                  f"{rows[-1]['gb_per_s']:7.1f} GB/s  identical {rows[-1]['bit_identical']}")
        del out, rest, want
    path = write_result("threshold-kernel", {**provenance(), "rows": rows}, args.out_dir,
                        args.tag or ("smoke" if args.smoke else ""))
    if not all(r["bit_identical"] for r in rows):
        raise SystemExit("threshold_kernel: an implementation differs from the eager rule")
    return path


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


if __name__ == "__main__":
    main()
