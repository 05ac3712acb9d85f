"""Search checkpoints: plain data (JSON), written atomically after every generation.

No pickle or dill: a run directory from someone else must not be able to execute code, and a pymoo
upgrade must not break resume. The state is what the next generation depends on: the population
(levels and fitness, in pymoo's order), pymoo's random generator state, the fitness cache and the
counters. Restoring it into a freshly set-up algorithm reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sieve.errors import SieveError
from sieve.io import read_json, write_json

FORMAT = "sieve.checkpoint/v1"


def cache_key(genome, stage: int) -> str:
    return f"{stage}:" + ",".join(str(int(v)) for v in genome)


@dataclass
class Checkpoint:
    generation: int
    pop_x: list[list[int]]
    pop_f: list[float]
    rng_state: dict[str, Any]
    cache: dict[str, list[float]] = field(default_factory=dict)
    evaluations: int = 0
    tokens: int = 0
    seconds: float = 0.0
    identity: str = ""

    def save(self, directory: Path) -> Path:
        return write_json(directory / "state.json", {"format": FORMAT, **asdict(self)})

    @classmethod
    def load(cls, directory: Path) -> Checkpoint | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        try:
            body = read_json(path)
        except ValueError:
            raise SieveError(f"checkpoint {path} is unreadable") from None
        if body.pop("format", None) != FORMAT:
            raise SieveError(f"checkpoint {path} is not {FORMAT}")
        return cls(**body)
