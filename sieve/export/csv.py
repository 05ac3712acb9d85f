"""``csv``: the per-module table (module, block, kind, rows, cols, sparsity, pruned weights)."""

from __future__ import annotations

import csv as _csv
import io
from typing import Any, Literal

from sieve.export.base import EXPORTERS, TABLE_COLUMNS, Exporter, ExportRequest, module_rows, named_order
from sieve.io import replace_path


def table_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = _csv.DictWriter(buffer, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "sparsity": f"{row['sparsity']:.6f}"})
    return buffer.getvalue()


@EXPORTERS.register
class CSVExporter(Exporter):
    name: Literal["csv"] = "csv"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        rows = module_rows(named_order(request.checked_workspace()), request.target.file.allocation)
        text = table_csv(rows)
        replace_path(request.out, lambda p: p.write_text(text), folder=False)
        return {"out": str(request.out), "rows": len(rows)}
