"""Which low-rank ranks keep a factorised matrix's two GEMMs fast: time ``x·Vᵀ`` then ``·Uᵀ`` per rank.

    python benchmarks/gemm_shapes.py [--dims 576x1536,4096x14336] [--tokens 1,32,32768] [--smoke] [--out-dir DIR]

For each matrix shape ``out × in`` (``--dims``) and each token count ``m`` (``--tokens``: 1 and 32 are
decode at batch 1 and 32, 32768 a prefill of 64 × 512), the seconds of the factorised product
``(x @ Vᵀ) @ Uᵀ`` (``x: m × in``, ``V: r × in``, ``U: out × r``; bf16 on the GPU) for ranks ``r`` on
both sides of each multiple of 64 in the range ``in/8 … in/2`` (``64k − 32, −8, −1, 0, +1, +8``), and
of the dense product ``x @ Wᵀ``. A rank's *slowdown* is its time over the time of the largest rank
that is a multiple of 64 and not smaller than it (a rounded-up rank does more work, so a slowdown
above 1 means the unaligned shape itself costs). The rule sieve derives from it is documented in
:mod:`sieve.primitives.lowrank` (``rank_multiple``).

Timing: CUDA events around 50 repetitions after 10 warm-up runs (CPU: perf_counter, 5 and 2).
The results file is rewritten after every shape, so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_device, provenance, write_result  # noqa: E402


def seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def ranks_for(cols: int) -> list[int]:
    out = set()
    for base in range(64, cols // 2 + 1, 64):
        if base >= cols // 8:
            out.update(base + d for d in (-32, -8, -1, 0, 1, 8))
    return sorted(r for r in out if r > 0)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="576x1536,1536x576,4096x4096,14336x4096,4096x14336")
    p.add_argument("--tokens", default="1,32,32768")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    device = bench_device(args.smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats, warmup = (50, 10) if device.type == "cuda" else (5, 2)
    dims = [tuple(int(v) for v in d.split("x")) for d in ("64x128" if args.smoke else args.dims).split(",")]
    tokens = [int(t) for t in ("1,16" if args.smoke else args.tokens).split(",")]
    command = " ".join(["benchmarks/gemm_shapes.py", *(sys.argv[1:] if argv is None else argv)])
    body: dict[str, Any] = {**provenance(), "command": command, "dtype": str(dtype).removeprefix("torch."), "rows": []}
    g = torch.Generator(device=device).manual_seed(0)
    for rows, cols in dims:
        weight = torch.randn(rows, cols, device=device, dtype=dtype, generator=g)
        for m in tokens:
            x = torch.randn(m, cols, device=device, dtype=dtype, generator=g)
            dense = seconds(lambda: x @ weight.T, device, repeats, warmup)
            times = {}
            for r in ranks_for(cols):
                v = torch.randn(r, cols, device=device, dtype=dtype, generator=g)
                u = torch.randn(rows, r, device=device, dtype=dtype, generator=g)
                times[r] = seconds(lambda: (x @ v.T) @ u.T, device, repeats, warmup)
            aligned = sorted(r for r in times if r % 64 == 0)
            for r, t in times.items():
                up = next((a for a in aligned if a >= r), None)
                body["rows"].append({"rows": rows, "cols": cols, "tokens": m, "rank": r, "seconds": t,
                                     "vs_dense": round(t / dense, 4),
                                     "slowdown_vs_aligned_up": round(t / times[up], 4) if up else None})
            worst = max((row["slowdown_vs_aligned_up"] or 0, row["rank"]) for row in body["rows"]
                        if (row["rows"], row["cols"], row["tokens"]) == (rows, cols, m))
            print(f"{rows}x{cols} m={m}: dense {dense * 1e6:.1f} us; worst unaligned slowdown {worst[0]:.2f}x (rank {worst[1]})",
                  flush=True)
            write_result("gemm-shapes", body, args.out_dir, args.tag)  # after every shape: a cut-off run keeps them
    path = write_result("gemm-shapes", body, args.out_dir, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
