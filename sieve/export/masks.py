"""``masks``: binary keep-masks, bit-packed, to re-apply the same sparsity to a fine-tuned variant.

File format (``sieve.masks/v1``, safetensors): one ``uint8`` tensor per pruned matrix, keyed by its
full module name, holding ``numpy.packbits(M.reshape(-1))`` (row-major, big bit order, ``1`` =
keep) of the mask ``M`` in the module's own weight layout (``(out, in)`` for Linear and for one
expert's slice of a 3-D expert tensor, ``(in, out)`` for GPT-2 Conv1D), so ``W ⊙ M`` needs no
knowledge of the architecture.
The metadata holds ``format``, ``shapes`` (JSON name → shape), ``bitorder``, the source ``model``,
its ``weights_hash``, ``method``, ``pattern`` and per-module ``sparsity``. A mask costs one bit per
weight (1/32 of a float32 matrix).

Masks are the pruner's decision, not the zeros of the pruned weights: for mask-only methods
(``S = |W| · f``) ``M = mask(S, s, pattern)`` recomputed from the dense weight and the pruner's own
channel factor, checked against the pruned weight; for weight-updating methods (SparseGPT) the
nonzeros of the pruned weight. ``sieve prune --masks FILE`` applies them (``W ← W ⊙ M``) to any
model with the same module names and shapes, refusing a mismatch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file

from sieve.errors import SieveError
from sieve.export.base import EXPORTERS, Exporter, ExportRequest
from sieve.io import replace_path
from sieve.primitives.mask import mask_from_scores
from sieve.prune.realise import PrunedModel

FORMAT = "sieve.masks/v1"
BITORDER = "big"


def pack(mask: torch.Tensor) -> torch.Tensor:
    """``numpy.packbits`` of a boolean mask, flattened row-major (uint8, ``ceil(numel / 8)`` bytes)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1), bitorder=BITORDER))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = math.prod(shape)
    bits = np.unpackbits(packed.numpy(), count=count, bitorder=BITORDER)
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def keep_masks(pruned: PrunedModel) -> dict[str, torch.Tensor]:
    """Keep-mask of every pruned matrix, in its module's weight layout."""
    pruner, allocation = pruned.pruner, pruned.file.allocation
    out = {}
    for m in pruner.matrices:
        sparsity = allocation.sparsity.get(m.name, 0.0)
        if sparsity <= 0:
            continue
        weight = m.weight
        if pruner.method.mask_only:
            dense = pruner.dense[m.name]
            keep = mask_from_scores(dense.float().abs() * pruner.factor[m.name], sparsity, allocation.pattern_of(m.name))
            expected = torch.where(keep, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
            if not torch.equal(expected, weight):
                raise RuntimeError(f"mask of {m.name} does not reproduce the pruned weight")  # a bug, not user error
        else:
            keep = weight != 0
        out[m.name] = keep.t() if m.transposed else keep
    return out


def write_masks(path: Path, masks: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {name: pack(mask) for name, mask in masks.items()}
    metadata = {
        "format": FORMAT,
        "bitorder": BITORDER,
        "shapes": json.dumps({name: list(mask.shape) for name, mask in masks.items()}),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
    }
    save_file(tensors, str(path), metadata=metadata)


def read_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(name → boolean mask in the module's weight layout, metadata)``; refuses other files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SieveError(f"masks file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise SieveError(f"{path} is not a {FORMAT} file (format={meta.get('format')!r})")
            shapes = json.loads(meta["shapes"])
            if not isinstance(shapes, dict) or not all(
                    isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s) for s in shapes.values()):
                raise SieveError(f"{path}: 'shapes' must map module names to lists of positive integers")
            masks = {name: unpack(fh.get_tensor(name), tuple(shape)) for name, shape in shapes.items()}
    except SieveError:
        raise
    except SafetensorError as exc:
        raise SieveError(f"{path} is not a safetensors file: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - bad JSON, a missing tensor, a short buffer: a damaged file
        raise SieveError(f"masks file {path} is damaged ({type(exc).__name__}: {exc})") from None
    return masks, {k: v for k, v in meta.items() if k not in ("format", "shapes", "bitorder")}


@EXPORTERS.register
class MasksExporter(Exporter):
    name: Literal["masks"] = "masks"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        if request.target.file.module_ranks:
            raise SieveError(f"the allocation factorises {len(request.target.file.module_ranks)} matrices; masks "
                             "describe zeros only — export --to hf (factors) or hf-merged")
        pruned = request.pruned()
        masks = keep_masks(pruned)
        sparsity = {name: 1.0 - float(mask.sum()) / mask.numel() for name, mask in masks.items()}
        meta = {
            "model": pruned.ws.model_id,
            "weights_hash": pruned.ws.weights_hash,
            "method": pruned.method.describe() if pruned.method is not None else None,
            "pattern": pruned.file.pattern,
            "sparsity": sparsity,
        }
        replace_path(request.out, lambda p: write_masks(p, masks, meta), folder=False)
        pruned.pruner.restore()
        bits = sum(m.numel() for m in masks.values())
        return {"out": str(request.out), "matrices": len(masks), "bits": bits, "bytes": request.out.stat().st_size}
