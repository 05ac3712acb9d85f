"""``sieve prune``'s configuration: one validated, frozen model built from the flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from sieve.data.splits import SplitSpec
from sieve.primitives.base import PrimitiveSpec
from sieve.primitives.mask import Mask
from sieve.scores.base import MethodSpec
from sieve.scores.fused import Fused
from sieve.stats.calibrate import CalibrationConfig
from sieve.workspace import InputsConfig


class PruneConfig(InputsConfig):
    """Prune uniformly at ``sparsity`` with ``method`` and ``primitive`` (``allocation`` unset), or
    reproduce an allocation file / run directory (then method and primitive come from the file).
    With the ``lowrank`` primitive, ``sparsity`` is the fraction of every matrix's parameters really
    removed (a uniform rank cut; ``method`` is unused)."""

    method: MethodSpec = Field(default_factory=Fused)
    primitive: PrimitiveSpec = Field(default_factory=Mask)
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    allocation: Path | None = None
    split: SplitSpec = Field(default_factory=SplitSpec)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @model_validator(mode="after")
    def _pattern_sparsity(self) -> PruneConfig:
        """An N:M pattern fixes the sparsity at N/M: the default follows it, a different explicit value is an error."""
        if not isinstance(self.primitive, Mask):
            return self
        pattern = self.primitive.parsed
        if pattern.structured and self.allocation is None and self.sparsity not in (0.0, pattern.sparsity):
            if "sparsity" in self.model_fields_set:
                raise ValueError(f"pattern {pattern} prunes exactly {pattern.sparsity:g}, not sparsity {self.sparsity:g}")
            object.__setattr__(self, "sparsity", pattern.sparsity)
        return self
