"""Where a search's wall time goes: named phases, timed once each, reported with the results.

A small model's search loop can be a fraction of the command's wall time (imports, the model load,
statistics, the dense references and graph capture, the final test-split table); ``results.json``
and the CLI's last lines show each phase so that cost is visible, not guessed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """Seconds per named phase, in the order first timed (a phase timed twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        return {name: round(s, 3) for name, s in self.seconds.items()}
