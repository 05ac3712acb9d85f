"""Allocation: matrix name → sparsity, the one object passed between prune, search and export.

On disk an allocation is ``best_allocation.json`` in format ``sieve.allocation/v1`` (see README):
per-module sparsity keyed by full module name plus the provenance needed to refuse a file made for
another model (model id, weight hash, module names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sieve import __version__
from sieve.errors import SieveError
from sieve.io import read_json, write_json
from sieve.models.arch import Matrix
from sieve.prune.mask import UNSTRUCTURED, Pattern, check_sparsity

FORMAT = "sieve.allocation/v1"


@dataclass(frozen=True)
class Allocation:
    """Per-matrix sparsity (fractions) and pattern; matrices not listed stay dense."""

    sparsity: Mapping[str, float]
    pattern: Pattern = UNSTRUCTURED
    patterns: Mapping[str, Pattern] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, s in self.sparsity.items():
            check_sparsity(s, f"sparsity of {name}")

    @classmethod
    def uniform(cls, matrices: Iterable[Matrix], sparsity: float, pattern: Pattern = UNSTRUCTURED) -> Allocation:
        check_sparsity(sparsity)
        if pattern.structured and sparsity not in (0.0, pattern.sparsity):
            raise SieveError(f"pattern {pattern} prunes exactly {pattern.sparsity:g}, not {sparsity:g}")
        return cls({m.name: sparsity for m in matrices}, pattern)

    def pattern_of(self, name: str) -> Pattern:
        return self.patterns.get(name, self.pattern)

    def check_against(self, matrices: Sequence[Matrix]) -> None:
        names = {m.name for m in matrices}
        unknown = [n for n in self.sparsity if n not in names]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise SieveError(f"allocation names module {unknown[0]!r} that the model lacks{more}")
        for m in matrices:
            if m.name in self.sparsity and self.sparsity[m.name] > 0:
                self.pattern_of(m.name).check(m.name, m.shape[1])

    def weighted_sparsity(self, matrices: Sequence[Matrix]) -> float:
        """Nominal parameter-weighted sparsity over ``matrices``."""
        total = sum(m.numel for m in matrices)
        return sum(self.sparsity.get(m.name, 0.0) * m.numel for m in matrices) / total

    def to_json(self, **provenance: Any) -> dict[str, Any]:
        body = {
            "format": FORMAT,
            "sieve_version": __version__,
            **provenance,
            "pattern": str(self.pattern),
            "modules": {name: float(s) for name, s in self.sparsity.items()},
        }
        if self.patterns:
            body["module_patterns"] = {n: str(p) for n, p in self.patterns.items()}
        return body

    def save(self, path: str | Path, **provenance: Any) -> Path:
        return write_json(path, self.to_json(**provenance))

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Allocation:
        if body.get("format") != FORMAT:
            raise SieveError(f"not a {FORMAT} allocation (format={body.get('format')!r})")
        patterns = {n: Pattern.parse(p) for n, p in body.get("module_patterns", {}).items()}
        return cls(dict(body["modules"]), Pattern.parse(body.get("pattern")), patterns)

    @classmethod
    def load(cls, path: str | Path) -> tuple[Allocation, dict[str, Any]]:
        path = Path(path)
        if path.is_dir():
            path = path / "best_allocation.json"
        if not path.exists():
            raise SieveError(f"allocation file {path} does not exist")
        try:
            body = read_json(path)
        except ValueError as exc:
            raise SieveError(f"allocation file {path} is not valid JSON: {exc}") from None
        return cls.from_json(body), body


def weights_hash(matrices: Sequence[Matrix]) -> str:
    """sha256 over the prunable matrices' names, shapes and dense bytes (order-sensitive)."""
    digest = hashlib.sha256()
    for m in matrices:
        w = m.module.weight.detach()
        digest.update(f"{m.name}:{tuple(w.shape)}:{w.dtype}".encode())
        digest.update(w.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
