"""Mixture-of-Experts decoder stacks (Mixtral, Qwen2-MoE, Qwen3-MoE, ... in transformers ≥ 5).

transformers stores a block's experts as two 3-D tensors in one module — ``gate_up_proj``
(experts × 2·intermediate × hidden, gate and up concatenated) and ``down_proj`` (experts × hidden
× intermediate) — which no Linear-based discovery sees. This adapter makes every expert's slice of
each tensor a :class:`~sieve.models.matrix.Matrix` of its own (``…experts.<e>.gate_up_proj``), so
the search can give every expert its own level, keeps every other Linear of the blocks (attention,
shared experts) and never touches routing: the router (a 2-D ``weight`` of experts × hidden) and a
shared expert's one-output gate are not prunable.
"""

from __future__ import annotations

from torch import nn

from sieve.errors import SieveError
from sieve.models.adapters.base import ADAPTERS, Adapter
from sieve.models.adapters.decoder import largest_homogeneous_list
from sieve.models.matrix import PRUNABLE_TYPES, Matrix

EXPERT_TENSORS = ("gate_up_proj", "down_proj")
#: Linear children of a MoE block that route rather than compute: never pruned
ROUTING = ("gate", "router", "shared_expert_gate")


def is_experts(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, t, None), nn.Parameter) and getattr(module, t).dim() == 3
               for t in EXPERT_TENSORS)


@ADAPTERS.register
class MixtureOfExperts(Adapter):
    name = "moe"
    priority = 10

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return any(is_experts(m) for m in model.modules())

    def blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return largest_homogeneous_list(model, allow_mixed=True)

    def matrices(self, model: nn.Module) -> list[Matrix]:
        prefix, blocks = self.blocks(model)
        found = []
        for index, block in enumerate(blocks):
            routed = {sub for sub, module in block.named_modules() if is_experts(module)}
            moe_parents = {sub.rpartition(".")[0] for sub in routed}
            for sub, module in block.named_modules():
                full = f"{prefix}.{index}.{sub}"
                if sub in routed:
                    for tensor in EXPERT_TENSORS:
                        for expert in range(getattr(module, tensor).shape[0]):
                            found.append(Matrix(name=f"{full}.{expert}.{tensor}", block=index,
                                                kind=f"{sub}.{expert}.{tensor}", module=module, param=tensor,
                                                expert=expert))
                elif isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
                    parent, _, leaf = sub.rpartition(".")
                    if parent in moe_parents and leaf in ROUTING:
                        continue
                    found.append(Matrix(name=full, block=index, kind=sub, module=module))
        if not found:
            raise SieveError(f"no prunable matrices inside the decoder blocks of {type(model).__name__}")
        return found
