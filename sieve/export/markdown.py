"""``markdown``: the per-module table with a header (model, hash, sparsity) and a total row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sieve.export.base import ExportRequest, Exporter, checked_workspace, module_rows, named_order, register_exporter
from sieve.io import write_text


def table_markdown(rows: list[dict[str, Any]], header: Mapping[str, Any]) -> str:
    lines = ["# Allocation", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items() if v is not None]
    lines += ["", "| module | block | kind | rows | cols | sparsity | pruned weights |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['module']}` | {r['block']} | {r['kind']} | {r['rows']} | {r['cols']} | {r['sparsity']:.4f} | {r['pruned_weights']:,} |"
        )
    total = sum(r["rows"] * r["cols"] for r in rows)
    pruned = sum(r["pruned_weights"] for r in rows)
    lines.append(f"| **all {len(rows)} matrices** ({total:,} weights) | | | | | {pruned / max(total, 1):.4f} | {pruned:,} |")
    return "\n".join(lines) + "\n"


@register_exporter
class MarkdownExporter(Exporter):
    name = "markdown"
    description = "per-module table as Markdown"

    def export(self, request: ExportRequest) -> dict[str, Any]:
        ws = checked_workspace(request)
        rows = module_rows(named_order(ws), request.source.allocation)
        body = request.source.body
        header = {
            "model": ws.loaded.model_id,
            "weights hash": body.get("weights_hash"),
            "method": body.get("method"),
            "budget": body.get("budget"),
            "pattern": body.get("pattern"),
            "source": str(request.source.path),
        }
        write_text(request.out, table_markdown(rows, header))
        return {"out": str(request.out), "rows": len(rows)}
