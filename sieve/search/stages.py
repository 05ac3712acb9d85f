"""Multi-fidelity stages: which validation examples each stage scores, and how many candidates go on.

A function of the configuration alone (sizes, a seeded permutation, promotions), so a candidate
meets the same examples and the same forward shapes in every run, resumed or not. A search that
stops early (``patience``) also scores held-out documents the stages never read: the *selection
stage*, one past the last, over the encoded examples that follow the validation ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StagePlan:
    """Nested validation subsets: stage ``i`` scores the first ``sizes[i]`` of a seeded permutation;
    the best ``promote[i]`` candidates of stage ``i`` go on to stage ``i + 1``. ``offspring``: the
    candidates a generation's first stage scores; ``selection``: the held-out examples of the
    selection stage (``final + 1``), empty where there is none."""

    sizes: tuple[int, ...]
    promote: tuple[int, ...]
    order: tuple[int, ...]
    offspring: int = 1
    selection: tuple[int, ...] = ()

    @classmethod
    def build(cls, n_validation: int, stages: Sequence[int], promote: Sequence[int], seed: int,
              offspring: int = 1, n_selection: int = 0) -> StagePlan:
        """Stages over the first ``n_validation`` encoded examples; the ``n_selection`` after them
        form the selection stage."""
        sizes = tuple(min(s, n_validation) for s in stages) + (n_validation,)
        order = tuple(int(i) for i in np.random.default_rng(seed).permutation(n_validation))
        return cls(sizes, tuple(promote), order, offspring, tuple(range(n_validation, n_validation + n_selection)))

    @property
    def selection_stage(self) -> int | None:
        """The stage that scores the held-out selection examples, or ``None``."""
        return self.final + 1 if self.selection else None

    def per_forward(self, stage: int, limit: int) -> int:
        """Candidates per forward at ``stage`` with at most ``limit``: the generation's ``n`` candidates
        of that stage in ``⌈n / limit⌉`` equal forwards, ``⌈n / ⌈n / limit⌉⌉`` each (24 in at most 16:
        two of 12). A function of the configuration alone, so a candidate meets the same shapes in
        every run, resumed or not."""
        n = (self.offspring, *self.promote, 1)[stage]
        k = min(limit, n)
        return -(-n // -(-n // k))

    @property
    def final(self) -> int:
        return len(self.sizes) - 1

    def indices(self, stage: int) -> list[int]:
        if stage == self.selection_stage:
            return list(self.selection)
        return sorted(self.order[: self.sizes[stage]])

    def fraction(self, stage: int) -> float:
        return len(self.indices(stage)) / self.sizes[-1]
