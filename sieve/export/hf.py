"""``hf``: a pruned Hugging Face folder that plain ``AutoModelForCausalLM.from_pretrained`` loads.

This is ``sieve prune --allocation`` with the allocation's own scoring method and statistics (a
run's ``stats/`` when exporting a run directory), so the folder's per-module sparsity equals the
allocation: each row of a matrix at sparsity ``s`` holds exactly ``int(cols · s)`` zeros (N:M:
``N`` of every ``M``). Written to ``OUT.partial`` and renamed; ``allocation.json`` (the source's
provenance plus the achieved sparsity) and ``prune.json`` sit beside the weights.
"""

from __future__ import annotations

from typing import Any

from sieve.export.base import ExportRequest, Exporter, register_exporter
from sieve.prune.api import prune_model


@register_exporter
class HFExporter(Exporter):
    name = "hf"
    description = "pruned model folder (safetensors + tokenizer + config + allocation.json)"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        summary = prune_model(request.prune_config(), request.out)
        return {"out": str(request.out), "model": summary["model"], "achieved_sparsity": summary["achieved_sparsity"]}
