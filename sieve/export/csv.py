"""``csv``: the per-module table (module, block, kind, rows, cols, sparsity, pruned weights)."""

from __future__ import annotations

import csv as _csv
import io
from typing import Any

from sieve.export.base import TABLE_COLUMNS, ExportRequest, Exporter, checked_workspace, module_rows, named_order, register_exporter
from sieve.io import write_text


def table_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = _csv.DictWriter(buffer, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "sparsity": f"{row['sparsity']:.6f}"})
    return buffer.getvalue()


@register_exporter
class CSVExporter(Exporter):
    name = "csv"
    description = "per-module table as CSV"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        ws = checked_workspace(request)
        rows = module_rows(named_order(ws), request.source.allocation)
        write_text(request.out, table_csv(rows))
        return {"out": str(request.out), "rows": len(rows)}
