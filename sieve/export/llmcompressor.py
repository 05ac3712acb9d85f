"""``llmcompressor``: a recipe YAML that asks llm-compressor for the allocation's per-module sparsity.

llm-compressor's ``SparseGPTModifier`` and ``WandaPruningModifier`` (``SparsityModifierBase``)
accept ``sparsity`` as a list matched *positionally* to the modules that ``targets`` selects, in
``model.named_modules()`` order (``match_named_modules``); a length mismatch raises at
``on_initialize``. So the recipe lists each pruned matrix's exact module name as a target, in
``named_modules()`` order, with ``sparsity[i]`` its allocated sparsity::

    sparsity_stage:
      sparsity_modifiers:
        SparseGPTModifier:
          sparsity: [0.41, 0.5, ...]
          mask_structure: "0:0"          # unstructured; "2:4" for N:M
          targets: [model.layers.0.self_attn.q_proj, ...]
          ignore: []
          block_size: 128                 # SparseGPT only
          dampening_frac: 0.01            # = sieve's λ = 0.01 · mean(diag H)

Matrices the allocation leaves dense are not targets (a target at sparsity 0 would still be
calibrated). ``mask_structure`` is one value per modifier, so an allocation mixing patterns (the
``nm`` search space: dense or 2:4 per matrix) gets one modifier group per pattern. llm-compressor
computes its own masks from its own calibration data: the recipe reproduces the sparsity levels,
not sieve's masks (use ``masks`` or ``hf`` for those). Its pruners only match ``Linear``/``Conv``
classes, so GPT-2's ``Conv1D`` matrices are refused rather than silently skipped.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from sieve.errors import SieveError
from sieve.export.base import EXPORTERS, Exporter, ExportRequest, named_order
from sieve.io import replace_path
from sieve.models.matrix import Matrix
from sieve.primitives.mask import Pattern
from sieve.prune.allocation import Allocation

MODIFIERS = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}
STAGE = "sparsity_stage"


def mask_structure(pattern: Pattern) -> str:
    return f"{pattern.n}:{pattern.m}" if pattern.structured else "0:0"


def build_recipe(matrices: list[Matrix], allocation: Allocation, modifier: str = "sparsegpt") -> dict[str, Any]:
    """The recipe as a mapping; ``matrices`` must be in ``model.named_modules()`` order."""
    if modifier not in MODIFIERS:
        raise SieveError(f"--modifier must be one of {', '.join(MODIFIERS)}, got {modifier!r}")
    groups: dict[Pattern, list[Matrix]] = {}
    for m in matrices:
        if allocation.sparsity.get(m.name, 0.0) > 0:
            if m.transposed:
                raise SieveError(
                    f"{m.name} is a transformers Conv1D, which llm-compressor's pruners do not match; "
                    "use --to hf or --to masks for this model"
                )
            groups.setdefault(allocation.pattern_of(m.name), []).append(m)
    if not groups:
        raise SieveError("the allocation prunes no module; nothing for llm-compressor to do")
    stage: dict[str, Any] = {}
    for pattern in sorted(groups):
        chosen = groups[pattern]
        args: dict[str, Any] = {
            "sparsity": [round(float(allocation.sparsity[m.name]), 6) for m in chosen],
            "mask_structure": mask_structure(pattern),
            "targets": [m.name for m in chosen],
            "ignore": [],
        }
        if modifier == "sparsegpt":
            args.update(block_size=128, dampening_frac=0.01)
        group = "sparsity_modifiers" if len(groups) == 1 else f"sparsity_{str(pattern).replace(':', '_')}_modifiers"
        stage[group] = {MODIFIERS[modifier]: args}
    return {STAGE: stage}


class _FlowLists(yaml.SafeDumper):
    """Lists of scalars on one line (a 210-entry sparsity list stays readable); ``"2:4"`` stays a string."""


_FlowLists.add_representer(
    list,
    lambda dumper, value: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", value, flow_style=all(not isinstance(v, (dict, list)) for v in value)
    ),
)
_FlowLists.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if ":" in value else None),
)


def recipe_yaml(recipe: dict[str, Any], header: dict[str, Any]) -> str:
    lines = ["# llm-compressor recipe written by sieve export --to llmcompressor"]
    lines += [f"# {k}: {v}" for k, v in header.items() if v is not None]
    lines.append("# sparsity[i] belongs to targets[i]; targets are in model.named_modules() order.")
    body = yaml.dump(recipe, Dumper=_FlowLists, sort_keys=False, width=100)
    return "\n".join(lines) + "\n" + body


@EXPORTERS.register
class LLMCompressorExporter(Exporter):
    """Options: ``modifier`` — ``sparsegpt`` (default) or ``wanda``."""

    name: Literal["llmcompressor"] = "llmcompressor"
    modifier: Literal["sparsegpt", "wanda"] = "sparsegpt"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        file = request.target.file
        if file.module_ranks:
            raise SieveError(f"the allocation factorises {len(file.module_ranks)} matrices; llm-compressor recipes "
                             "express sparsity only — export --to hf")
        ws = request.checked_workspace()
        matrices = named_order(ws)
        allocation = file.allocation
        recipe = build_recipe(matrices, allocation, self.modifier)
        header = {
            "model": ws.model_id,
            "weights_hash": file.weights_hash,
            "allocation": str(request.target.path),
            "budget": file.budget,
            "achieved_sparsity": round(allocation.weighted_sparsity(ws.matrices), 6),
        }
        text = recipe_yaml(recipe, header)
        replace_path(request.out, lambda p: p.write_text(text), folder=False)
        targets = sum(len(args["targets"]) for group in recipe[STAGE].values() for args in group.values())
        return {"out": str(request.out), "modifier": MODIFIERS[self.modifier], "targets": targets}
