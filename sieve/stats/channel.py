"""Calibration statistics: what the inputs of every prunable matrix look like.

For matrix ``W`` (out × in) with input activations ``X`` (tokens × in) over a calibration set we keep

* ``sq_sum[j] = Σ_t X[t, j]²`` — the squared L2 norm of input channel ``j`` (Wanda's ``‖X_j‖²``);
* ``n_tokens`` — the number of (non-padding) tokens seen;
* optionally ``hessian = Xᵀ X`` (in × in), which SparseGPT and the low-rank projection need.

Statistics are sums, so streaming batches gives the same result as one big batch (up to float
rounding) and two runs' statistics could be merged by adding. One :class:`CalibrationStats` exists
per calibration source (``general``, ``task``), saved as safetensors with its **fingerprint** (a
hash of the model's weights, the exact calibration tokens and the collection settings, see
:mod:`sieve.stats.calibrate`); whoever reads statistics compares fingerprints, so statistics of
another model or other data are never used by mistake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sieve.errors import SieveError
from sieve.io import write_safetensors

SOURCES = ("general", "task")


@dataclass
class ChannelStats:
    """Input statistics of one matrix: channel square sums, token count, optional ``XᵀX``."""

    sq_sum: torch.Tensor
    n_tokens: int = 0
    hessian: torch.Tensor | None = None

    @property
    def norm(self) -> torch.Tensor:
        """Per-channel root-mean-square activation ``sqrt(Σ_t x_tj² / n)`` (float32)."""
        return (self.sq_sum / max(self.n_tokens, 1)).sqrt().float()


@dataclass(frozen=True)
class MatrixStats:
    """The statistics a scoring method may use for one matrix: general and/or task."""

    general: ChannelStats | None = None
    task: ChannelStats | None = None

    def source(self, name: str) -> ChannelStats:
        stats = getattr(self, name)
        if stats is None:
            raise SieveError(f"{name} calibration statistics are required but were not collected")
        return stats


@dataclass
class CalibrationStats:
    """Statistics of every prunable matrix for one calibration source."""

    source: str
    per_matrix: dict[str, ChannelStats] = field(default_factory=dict)
    fingerprint: str = ""
    aliases: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ChannelStats:
        return self.per_matrix[name]

    @property
    def has_hessian(self) -> bool:
        return all(s.hessian is not None for s in self.per_matrix.values())

    def save(self, path: str | Path) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        tokens = {}
        for name, stats in self.per_matrix.items():
            tokens[name] = stats.n_tokens
            if name in self.aliases:
                continue
            tensors[f"{name}.sq_sum"] = stats.sq_sum
            if stats.hessian is not None:
                tensors[f"{name}.hessian"] = stats.hessian
        meta = {"source": self.source, "fingerprint": self.fingerprint, "n_tokens": json.dumps(tokens),
                "aliases": json.dumps(self.aliases)}
        return write_safetensors(path, tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationStats:
        """Read a statistics file; a damaged or foreign file is one error line."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
            tokens = json.loads(meta["n_tokens"])
            aliases = json.loads(meta.get("aliases", "{}"))
            if not isinstance(tokens, dict) or not isinstance(aliases, dict) or meta.get("source") not in SOURCES:
                raise ValueError("metadata of the wrong shape")
            per_matrix: dict[str, ChannelStats] = {}
            for name, n in tokens.items():
                if name not in aliases:
                    per_matrix[name] = ChannelStats(tensors[f"{name}.sq_sum"], int(n), tensors.get(f"{name}.hessian"))
            per_matrix = {name: per_matrix[aliases.get(name, name)] for name in tokens}
        except Exception as exc:  # noqa: BLE001 - safetensors, JSON and key errors all mean "damaged"
            raise SieveError(f"statistics file {path} is damaged or not sieve's ({type(exc).__name__}: {exc})") from None
        return cls(source=meta["source"], per_matrix=per_matrix, fingerprint=meta.get("fingerprint", ""), aliases=aliases)
