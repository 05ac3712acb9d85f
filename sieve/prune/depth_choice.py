"""Which ``k`` of ``L`` decoder blocks the depth-pruning baselines remove: pure rules on
statistics (:mod:`sieve.stats.blocks`) or on a caller's cost, used as search seeds and as
benchmark baselines. Every rule returns the removed block indices sorted ascending, ready for
:func:`sieve.models.depth.remove_blocks`.

* :func:`shortgpt_blocks` (ShortGPT, arXiv 2403.03853): the ``k`` blocks of lowest block
  influence ``BI_l = 1 − mean_t cos(x_l, x_{l+1})``, adjacent or not;
* :func:`angular_blocks` (Gromov et al., arXiv 2403.17887): the contiguous run ``l … l+k−1`` of
  lowest angular distance ``D(l, k) = mean_s arccos(cos(x_l, x_{l+k}))/π``;
* :func:`greedy_blocks` / :func:`greedy_path`: remove one block at a time, each time the one whose
  removal (with those already removed) costs least — with task NLL on validation documents as the
  cost this kept far more task accuracy than either statistic on real models (REFERENCE.md).

``k`` may be ``0 … L−1``: removing every block is no model (``remove_blocks`` refuses it too).
Ties go to the lower block index throughout.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable

import numpy as np

from sieve.errors import SieveError

logger = logging.getLogger(__name__)

Cost = Callable[[frozenset[int]], float]


def check_count(k: int, count: int) -> int:
    """``k`` as an int, if ``0 ≤ k < count`` (at least one block must stay)."""
    try:
        k = operator.index(k)
    except TypeError:
        raise SieveError(f"the number of blocks to remove must be an integer, got {k!r}") from None
    if not 0 <= k < count:
        raise SieveError(f"cannot remove {k} of {count} decoder blocks: choose 0 to {count - 1}")
    return k


def shortgpt_blocks(influence: np.ndarray, k: int) -> tuple[int, ...]:
    """The ``k`` blocks with the lowest ``influence`` (ShortGPT's ``BI_l``), sorted.

    ``argsort`` is stable, so of equal ``BI`` the lower index goes first.
    """
    influence = np.asarray(influence, dtype=np.float64)
    if influence.ndim != 1 or influence.size == 0:
        raise SieveError(f"block influence must be one value per block, got shape {influence.shape}")
    if not np.isfinite(influence).all():
        bad = np.flatnonzero(~np.isfinite(influence)).tolist()
        raise SieveError(f"block influence has non-finite values at blocks {bad}")
    k = check_count(k, influence.size)
    return tuple(sorted(int(i) for i in np.argsort(influence, kind="stable")[:k]))


def angular_blocks(angular: np.ndarray, k: int) -> tuple[int, ...]:
    """The contiguous run ``l … l+k−1`` minimising ``angular[l, k]`` (Gromov et al.'s
    ``D(l, k)``, shape ``(L, L+1)`` as in :class:`~sieve.stats.blocks.BlockSimilarity`), sorted.

    ``l* = argmin_{0 ≤ l ≤ L−k} angular[l, k]``. The paper states no tie rule (it only observes that
    the minimum tends to fall on deep blocks); of equal distances the *lower* ``l`` wins here, the
    same rule as everywhere in this module. ``k = 0`` is the empty run.
    """
    angular = np.asarray(angular, dtype=np.float64)
    if angular.ndim != 2 or angular.shape[0] == 0 or angular.shape[1] != angular.shape[0] + 1:
        raise SieveError(f"angular distances must have shape (L, L+1), got {angular.shape}")
    count = angular.shape[0]
    k = check_count(k, count)
    column = angular[: count - k + 1, k]  # runs starting at 0 … L−k
    if not np.isfinite(column).all():
        raise SieveError(f"angular distances of {k}-block runs are non-finite at starts "
                         f"{np.flatnonzero(~np.isfinite(column)).tolist()}")
    start = int(np.argmin(column))  # the first minimum: the lower start
    return tuple(range(start, start + k))


def greedy_path(cost: Cost, count: int, k: int) -> list[tuple[int, float]]:
    """Greedy removal of ``k`` of ``count`` blocks: ``[(block removed, cost after it), …]`` in
    removal order.

    With ``R_0 = ∅``: ``b_i = argmin_{b ∉ R_{i−1}} cost(R_{i−1} ∪ {b})``, ``R_i = R_{i−1} ∪ {b_i}``.
    ``cost`` is called once per candidate and step, ``count + (count−1) + … + (count−k+1)`` times
    in all, each time with a new ``frozenset`` of removed blocks. Ties go to the lower index; a
    NaN cost ranks after every number (a model that breaks down is the worst choice, not an error).
    """
    try:
        count = operator.index(count)
    except TypeError:
        raise SieveError(f"the number of blocks must be an integer, got {count!r}") from None
    if count < 1:
        raise SieveError(f"a model needs at least one decoder block, got {count}")
    k = check_count(k, count)
    removed: frozenset[int] = frozenset()
    path: list[tuple[int, float]] = []
    for step in range(k):
        best: tuple[bool, float, int] | None = None
        for block in range(count):
            if block in removed:
                continue
            value = float(cost(removed | {block}))
            key = (math.isnan(value), value, block)
            if best is None or key < best:
                best = key
        broken, value, block = best
        if broken:
            logger.warning("greedy step %d: every candidate's cost is NaN; removing block %d", step + 1, block)
        removed = removed | {block}
        path.append((block, value))
        logger.info("greedy step %d/%d: removed block %d, cost %.6g", step + 1, k, block, value)
    return path


def greedy_blocks(cost: Cost, count: int, k: int) -> tuple[int, ...]:
    """The ``k`` blocks :func:`greedy_path` removes, sorted."""
    return tuple(sorted(block for block, _ in greedy_path(cost, count, k)))
