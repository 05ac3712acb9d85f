"""``markdown``: the per-module table with a header (model, hash, sparsity) and a total row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from sieve.export.base import EXPORTERS, Exporter, ExportRequest, module_rows, named_order
from sieve.io import replace_path


def table_markdown(rows: list[dict[str, Any]], header: Mapping[str, Any]) -> str:
    lines = ["# Allocation", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items() if v is not None]
    lines += ["", "| module | block | kind | rows | cols | sparsity | rank | pruned weights |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['module']}` | {r['block']} | {r['kind']} | {r['rows']} | {r['cols']} | {r['sparsity']:.4f} | {r['rank']} | "
            f"{r['pruned_weights']:,} |"
        )
    total = sum(r["rows"] * r["cols"] for r in rows)
    pruned = sum(r["pruned_weights"] for r in rows)
    lines.append(f"| **all {len(rows)} matrices** ({total:,} weights) | | | | | {pruned / max(total, 1):.4f} | | {pruned:,} |")
    return "\n".join(lines) + "\n"


@EXPORTERS.register
class MarkdownExporter(Exporter):
    name: Literal["markdown"] = "markdown"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        ws = request.checked_workspace()
        file = request.target.file
        rows = module_rows(named_order(ws), file.allocation)
        header = {
            "model": ws.model_id,
            "weights hash": file.weights_hash,
            "method": file.method.describe() if file.method else None,
            "budget": file.budget,
            "pattern": file.pattern,
            "allocation": str(request.target.path),
        }
        text = table_markdown(rows, header)
        replace_path(request.out, lambda p: p.write_text(text), folder=False)
        return {"out": str(request.out), "rows": len(rows)}
