"""Export an allocation (a file or a search run) to the formats other tools read.

One module per format, one registry (:data:`sieve.export.base.EXPORTERS`): a new format is one new
module here with an :class:`~sieve.export.base.Exporter` subclass decorated with
``@EXPORTERS.register``.

================= ================================================================================
``hf``            pruned model folder (safetensors + tokenizer + config + ``allocation.json``)
``llmcompressor`` recipe YAML for llm-compressor's ``SparseGPTModifier`` / ``WandaPruningModifier``
``masks``         bit-packed binary masks (safetensors) to re-apply with ``sieve prune --masks``
``csv``           per-module table
``markdown``      per-module table
================= ================================================================================
"""

from sieve.export.base import EXPORTERS, Exporter, ExportRequest, export_allocation

__all__ = ["EXPORTERS", "ExportRequest", "Exporter", "export_allocation"]
