"""The generic decoder-stack adapter (Llama, Mistral, Qwen2, GPT-2, ...).

Blocks are discovered from the module tree, not from per-architecture name lists: the decoder
stack is the ``nn.ModuleList`` holding the most parameters whose children all share one class.
Every Linear / GPT-2 Conv1D inside it is prunable; embeddings and ``lm_head`` sit outside it and
are never touched.
"""

from __future__ import annotations

from torch import nn

from sieve.errors import SieveError
from sieve.models.adapters.base import ADAPTERS, Adapter
from sieve.models.matrix import PRUNABLE_TYPES, Matrix


def largest_homogeneous_list(model: nn.Module, allow_mixed: bool = False) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` holding the most parameters whose children share one class (with
    ``allow_mixed``, any class mix: MoE models interleave dense and sparse blocks of one class,
    but the experts' own ModuleLists must not win)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if not allow_mixed and len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise SieveError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best[1], best[2]


@ADAPTERS.register
class DecoderStack(Adapter):
    """Decoder stack = the largest homogeneous ModuleList; matrices = its Linear/Conv1D leaves."""

    name = "decoder"
    priority = -100

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return True

    def blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return largest_homogeneous_list(model)

    def matrices(self, model: nn.Module) -> list[Matrix]:
        prefix, blocks = self.blocks(model)
        found = []
        for index, block in enumerate(blocks):
            for sub, module in block.named_modules():
                if isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
                    name = f"{prefix}.{index}.{sub}" if prefix else f"{index}.{sub}"
                    found.append(Matrix(name=name, block=index, kind=sub, module=module))
        if not found:
            raise SieveError(f"no Linear or Conv1D layers inside the decoder blocks of {type(model).__name__}")
        return found
