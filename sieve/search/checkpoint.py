"""Search checkpoints: plain data (JSON), written atomically after every generation.

No pickle or dill: a run directory from someone else must not be able to execute code, and a pymoo
upgrade must not break resume. The state is what the next generation depends on: the population
(levels and fitness, in pymoo's order), pymoo's random generator state, the fitness cache and the
counters. Restoring it into a freshly set-up algorithm reproduces the uninterrupted run bit for bit.
Reading validates the file against this schema: a damaged checkpoint is one error line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sieve.config import Frozen, validate
from sieve.errors import SieveError
from sieve.io import read_json, write_json
from sieve.models.identity import ModelIdentity

FORMAT = "sieve.checkpoint/v1"


def cache_key(genome, stage: int) -> str:
    return f"{stage}:" + ",".join(str(int(v)) for v in genome)


class Checkpoint(Frozen):
    format: Literal["sieve.checkpoint/v1"] = FORMAT
    generation: int = Field(ge=0)
    pop_x: list[list[int]]
    pop_f: list[float]
    rng_state: dict[str, Any]
    cache: dict[str, tuple[float, int]] = Field(default_factory=dict)
    evaluations: int = Field(0, ge=0)
    tokens: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0.0)
    identity: str = ""
    config_identity: dict[str, Any] = Field(default_factory=dict)
    weights_hash: str = ""
    model: ModelIdentity | None = None
    #: early stopping's lowest held-out value and its generation
    selection_best: tuple[float, int] | None = None

    def check_model(self, weights_hash: str, model: ModelIdentity) -> None:
        """Refuse to continue on another model: its prunable weights, its ``config.json`` or its
        tokenizer changed since this checkpoint (fitness values of two models in one population)."""
        if self.weights_hash and self.weights_hash != weights_hash:
            raise SieveError(f"the model's weights changed since the run started (weights hash {self.weights_hash} "
                             f"then, {weights_hash} now); start a new run")
        changed = model.changes(self.model) if self.model is not None else []
        if changed:
            raise SieveError(f"the model changed since the run started ({'; '.join(changed)}); start a new run")

    def save(self, path: Path) -> Path:
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.exists():
            return None
        try:
            body = read_json(path)
        except (ValueError, UnicodeDecodeError):
            raise SieveError(f"checkpoint {path} is not valid JSON (damaged?)") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise SieveError(f"checkpoint {path} is not a {FORMAT} file")
        checkpoint = validate(cls, body, f"checkpoint {path.name}")
        if len(checkpoint.pop_x) != len(checkpoint.pop_f) or len({len(x) for x in checkpoint.pop_x}) > 1:
            raise SieveError(f"checkpoint {path}: population levels and fitness values do not match in shape")
        return checkpoint
