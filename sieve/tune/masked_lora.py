"""Masked LoRA on peft: the zeros of a pruned matrix stay exactly zero in training and after the merge.

peft's LoRA adds ``ΔW = B·A·s`` (``s = α/r``) to a Linear, and its merge ``W ← W + ΔW`` fills every
pruned position back in (peft has no masked LoRA; locuslab/wanda #10). SQFT's SparsePEFT masks the
update with the matrix's own pattern, ``M = (W ≠ 0)``::

    forward:  y = x·Wᵀ + x·(M ⊙ ΔW)ᵀ      the effective weight is W + M ⊙ ΔW = M ⊙ (W + ΔW), as W = M ⊙ W
    merge:    W ← W + M ⊙ ΔW              exactly 0.0 wherever M = 0 (W is 0.0 there, and so is the update)

:class:`MaskedLoraLinear` is peft's own ``lora.Linear`` with those two lines changed:
``get_delta_weight`` returns ``where(M, ΔW, 0)`` (peft's ``merge`` / ``unmerge`` call it) and
``forward`` adds ``x·(M ⊙ ΔW)ᵀ`` instead of ``B(A(x))·s``. It is registered through peft's custom
module dispatch (``LoraConfig._register_custom_module``) for ``nn.Linear``, so peft builds,
initialises (A Kaiming-uniform, B zero: step 0 is the untuned model) and names the adapters as it
always does. The mask is read from the base weight when the layer is built and kept as a
non-persistent buffer (it is the weight's zeros, not state to save). A matrix without zeros (a
dense matrix, the two Linear parts of a factorised one) gets no mask: plain LoRA, merged into the
same shapes, so a factorised matrix keeps its rank. Computing ``ΔW`` costs ``out·r·in`` per masked
layer and step, small next to a batch's tokens.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from sieve.errors import SieveError
from sieve.models.adapters import adapter_for
from sieve.tune.config import LoraSettings

log = logging.getLogger(__name__)

ADAPTER = "default"


class MaskedLoraLinear(LoraLinear):
    """peft's LoRA Linear whose update is masked by the base weight's zeros (module docstring)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, **kwargs)
        weight = self.get_base_layer().weight
        keep = weight != 0
        self.register_buffer("lora_keep", None if bool(keep.all()) else keep, persistent=False)

    @property
    def masked(self) -> bool:
        return self.lora_keep is not None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        delta = super().get_delta_weight(adapter)
        if self.lora_keep is None:
            return delta
        return torch.where(self.lora_keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.lora_keep is None or self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter)
            inp = x.to(delta.dtype)
            result = result + F.linear(self.lora_dropout[adapter](inp), delta).to(result.dtype)
        return result


def lora_targets(model: nn.Module, patterns: Sequence[str] = ()) -> list[str]:
    """Names of the ``nn.Linear`` modules inside the decoder blocks whose in-block name matches one
    of ``patterns`` (all of them when empty); an empty result is an error naming the patterns."""
    prefix, blocks = adapter_for(model).blocks(model)
    found = []
    for index, block in enumerate(blocks):
        for sub, module in block.named_modules():
            if isinstance(module, nn.Linear) and (not patterns or any(fnmatch.fnmatchcase(sub, p) for p in patterns)):
                found.append(f"{prefix}.{index}.{sub}" if prefix else f"{index}.{sub}")
    if not found:
        what = f"matching {', '.join(patterns)}" if patterns else "at all"
        raise SieveError(f"lora.targets: no Linear inside the decoder blocks {what} (GPT-2's Conv1D is not tuned)")
    return found


def attach(model: nn.Module, targets: Sequence[str], settings: LoraSettings, *, keep_zeros: bool,
           seed: int) -> dict[str, nn.Parameter]:
    """Inject LoRA adapters (masked where the weight has zeros and ``keep_zeros``) into ``targets``
    of ``model`` in place, freeze everything else, and return the trainable parameters by name. The
    A matrices are drawn from a generator seeded with ``seed`` (the global RNG is left as it was)."""
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(targets), bias="none")
    if keep_zeros:
        config._register_custom_module({nn.Linear: MaskedLoraLinear})
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for name, p in model.named_parameters():
        p.requires_grad_(name in params)
    masked = sum(isinstance(m, MaskedLoraLinear) and m.masked for m in model.modules())
    log.info("LoRA rank %d on %d Linear modules (%d masked by their zeros), %d trainable parameters",
             settings.rank, len(targets), masked, sum(p.numel() for p in params.values()))
    return params


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every adapter tensor by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def load_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's adapters; names and shapes must match exactly."""
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise SieveError(f"adapter state does not match the model's adapters (missing {missing[:2]}, unexpected {extra[:2]})")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise SieveError(f"adapter {name} has shape {tuple(state[name].shape)}, the model's {tuple(p.shape)}")
            p.copy_(state[name])


def merge(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight (``W ← W + M ⊙ ΔW``) and put the base Linear back
    in its place: the model has exactly its original modules and shapes again."""
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    with torch.no_grad():
        for name, module in layers:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def masked_modules(model: nn.Module) -> list[str]:
    """Names of the adapted modules whose update is masked."""
    return [n for n, m in model.named_modules() if isinstance(m, MaskedLoraLinear) and m.masked]
