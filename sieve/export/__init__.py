"""Export an allocation (a file or a search run) to the formats other tools read.

One module per format, one registry (:mod:`sieve.export.base`): a new format is one new module
that subclasses :class:`~sieve.export.base.Exporter`, decorates it with
:func:`~sieve.export.base.register_exporter`, and an import line below.

=============== ================================================================================
``hf``          pruned model folder (safetensors + tokenizer + config + ``allocation.json``)
``llmcompressor`` recipe YAML for llm-compressor's ``SparseGPTModifier`` / ``WandaPruningModifier``
``masks``       bit-packed binary masks (safetensors) to re-apply with ``sieve prune --masks``
``csv``         per-module table
``markdown``    per-module table
=============== ================================================================================
"""

from sieve.export.base import ExportRequest, Exporter, available_formats, export_allocation, get_exporter, register_exporter
from sieve.export import csv, hf, llmcompressor, markdown, masks  # noqa: F401  (registration)

__all__ = ["ExportRequest", "Exporter", "available_formats", "export_allocation", "get_exporter", "register_exporter"]
