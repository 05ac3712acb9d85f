"""Factorised linears: a low-rank model that is really smaller, saved and loaded like any HF model.

A factorised matrix ``W ≈ A B`` (``A``: out × r, ``B``: r × in) becomes :class:`FactorizedLinear`,
two plain ``nn.Linear`` in sequence — ``project`` (in → r, weight ``B``) and ``expand`` (r → out,
weight ``A``, the original bias) — so ``y = expand(project(x))`` costs ``r·(in + out)`` multiply-adds
per token instead of ``in·out``, and every tool that understands ``nn.Linear`` (peft LoRA with
``target_modules="all-linear"``, quantisers) understands the parts. The folder is a normal
transformers checkpoint whose ``config.json`` carries ``sieve_lowrank: {module name: rank}``;
:func:`load_pretrained` rebuilds the architecture from the config, swaps in the factorised
modules, and loads the weights strictly. GPT-2's ``Conv1D`` is factorised the same way (its weight
is stored transposed, the factors are not).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sieve.errors import SieveError

CONFIG_KEY = "sieve_lowrank"


class FactorizedLinear(nn.Module):
    """``y = expand(project(x))``: a rank-``r`` replacement for a Linear (or Conv1D) of shape out × in."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.project = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.expand = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    @classmethod
    def from_factors(cls, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> FactorizedLinear:
        module = cls(b.shape[1], a.shape[0], a.shape[1], bias is not None, dtype=dtype, device=a.device)
        with torch.no_grad():
            module.project.weight.copy_(b)
            module.expand.weight.copy_(a)
            if bias is not None:
                module.expand.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.project(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def install(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Replace the named Linear / Conv1D modules by empty :class:`FactorizedLinear` of the given ranks."""
    for name, rank in ranks.items():
        parent, child = _parent(model, name)
        old = getattr(parent, child)
        if isinstance(old, nn.Linear):
            out_features, in_features = old.weight.shape
        elif isinstance(old, Conv1D):
            in_features, out_features = old.weight.shape
        else:
            raise SieveError(f"{name} is a {type(old).__name__}, not a Linear or Conv1D that can be factorised")
        setattr(parent, child, FactorizedLinear(in_features, out_features, int(rank), old.bias is not None,
                                                dtype=old.weight.dtype, device=old.weight.device))


def factorise(model: nn.Module, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Replace each named module by a :class:`FactorizedLinear` holding ``(A, B)`` (its bias kept)."""
    for name, (a, b) in factors.items():
        parent, child = _parent(model, name)
        old = getattr(parent, child)
        setattr(parent, child, FactorizedLinear.from_factors(a, b, old.bias, old.weight.dtype))
    record_ranks(model)


def record_ranks(model: nn.Module) -> None:
    """``config.sieve_lowrank`` := every :class:`FactorizedLinear` of ``model`` by its module name now
    (names follow the model: after decoder blocks are removed, the kept blocks' new numbering)."""
    ranks = {name: module.rank for name, module in model.named_modules() if isinstance(module, FactorizedLinear)}
    model.config.update({CONFIG_KEY: ranks})


def load_pretrained(path: str | Path, **kwargs) -> nn.Module:
    """Load a folder written by ``sieve export --to hf``: a plain checkpoint, or a low-rank one
    (``config.json`` with ``sieve_lowrank``) rebuilt with :class:`FactorizedLinear` modules.
    ``kwargs`` go to ``from_pretrained`` / ``from_config`` (``dtype``, ``device_map`` for plain folders)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise SieveError(f"{path} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    ranks = getattr(config, CONFIG_KEY, None)
    if not ranks:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    dtype = kwargs.pop("dtype", None) or getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    # A real (not meta) build: non-persistent buffers such as rotary frequencies must be computed.
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    install(model, ranks)
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SieveError(f"{path}: the weights do not match the factorised architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.to(dtype)
    return model.eval()
